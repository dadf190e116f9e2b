/* shdict_region.c -- the memfd that holds every shared dict: the master makes it, workers map it.
 *
 * As with the scoreboard (scoreboard.c), the memory belongs to the master, not to a worker: a dict
 * outlives worker crashes, reloads and scaling, because every new worker maps the same memfd. The
 * first page is a directory (name, offset, size per dict); each dict follows, page aligned. A reload
 * that names a new dict grows the memfd and appends it (workers started later map it); a changed size
 * would mean moving a dict every worker has mapped, so it waits for the next restart. */
#define _GNU_SOURCE
#include "shdict_region.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define DIR_MAGIC 0x6d66736872656731ULL /* "mfshreg1" */
#define DIR_SIZE 4096

typedef struct {
  uint64_t magic;
  uint32_t count; /* written last: an entry below it is complete */
  uint32_t pad;
  uint64_t end;   /* bytes of the memfd in use */
  struct {
    char name[SHD_NAME_MAX + 1];
    uint64_t off, size;
  } dict[SHD_REGION_MAX];
} region_dir_t;

_Static_assert(sizeof(region_dir_t) <= DIR_SIZE, "the directory fits its page");

static struct {
  int fd;
  region_dir_t *dir;
  int count;
  shdict_t *dict[SHD_REGION_MAX];
} shdict_region = {.fd = -1};

int shdict_region_create(char *err, size_t errlen) {
  int fd = memfd_create("moonfork-shared", MFD_CLOEXEC);
  if (fd < 0) goto fail;
  if (ftruncate(fd, DIR_SIZE) != 0) goto fail_close;
  void *p = mmap(NULL, DIR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) goto fail_close;
  shdict_region.dir = p;
  shdict_region.dir->magic = DIR_MAGIC;
  shdict_region.dir->end = DIR_SIZE;
  shdict_region.fd = fd;
  return fd;
fail_close:
  close(fd);
fail:
  snprintf(err, errlen, "cannot create the shared dicts' memory: %s", strerror(errno));
  return -1;
}

int shdict_region_fd(void) { return shdict_region.fd; }

int shdict_region_add(const char *name, uint64_t size, uint64_t *old_size, char *err, size_t errlen) {
  region_dir_t *dir = shdict_region.dir;
  long page = sysconf(_SC_PAGESIZE);
  size = (size + (uint64_t)page - 1) / (uint64_t)page * (uint64_t)page;
  for (uint32_t i = 0; i < dir->count; i++) {
    if (strcmp(dir->dict[i].name, name) != 0) continue;
    *old_size = dir->dict[i].size;
    return dir->dict[i].size == size ? 1 : 2;
  }
  if (dir->count >= SHD_REGION_MAX || strlen(name) > SHD_NAME_MAX) {
    snprintf(err, errlen, "shared dict %s: at most %d dicts with names of at most %d bytes", name,
             SHD_REGION_MAX, SHD_NAME_MAX);
    return -1;
  }
  uint64_t off = (dir->end + (uint64_t)page - 1) / (uint64_t)page * (uint64_t)page;
  void *p = MAP_FAILED;
  errno = 0;
  if (ftruncate(shdict_region.fd, (off_t)(off + size)) != 0 ||
      (p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, shdict_region.fd, (off_t)off)) == MAP_FAILED ||
      shdict_init(p, size) != 0) {
    snprintf(err, errlen, "shared dict %s: cannot make %llu bytes: %s", name, (unsigned long long)size,
             errno ? strerror(errno) : "too small");
    if (p != MAP_FAILED) munmap(p, size);
    return -1;
  }
  uint32_t i = dir->count;
  snprintf(dir->dict[i].name, sizeof dir->dict[i].name, "%s", name);
  dir->dict[i].off = off;
  dir->dict[i].size = size;
  dir->end = off + size;
  dir->count = i + 1;
  shdict_region.dict[shdict_region.count++] = shdict_open(p, size);
  return 0;
}

int shdict_region_attach(int fd, char *err, size_t errlen) {
  region_dir_t *dir = mmap(NULL, DIR_SIZE, PROT_READ, MAP_SHARED, fd, 0);
  if (dir == MAP_FAILED || dir->magic != DIR_MAGIC || dir->count > SHD_REGION_MAX) {
    snprintf(err, errlen, "fd %d holds no shared dicts", fd);
    if (dir != MAP_FAILED) munmap(dir, DIR_SIZE);
    close(fd);
    return -1;
  }
  int rc = 0;
  for (uint32_t i = 0; i < dir->count; i++) {
    void *p = mmap(NULL, dir->dict[i].size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)dir->dict[i].off);
    shdict_t *d = p == MAP_FAILED ? NULL : shdict_open(p, dir->dict[i].size);
    if (d == NULL) {
      snprintf(err, errlen, "cannot map shared dict %s: %s", dir->dict[i].name, strerror(errno));
      rc = -1;
      break;
    }
    shdict_region.dict[shdict_region.count++] = d;
  }
  shdict_region.dir = dir;
  close(fd);
  return rc;
}

int shdict_region_count(void) { return shdict_region.count; }

const char *shdict_region_name(int i) {
  return i >= 0 && i < shdict_region.count ? shdict_region.dir->dict[i].name : NULL;
}

shdict_t *shdict_region_dict(int i) { return i >= 0 && i < shdict_region.count ? shdict_region.dict[i] : NULL; }

shdict_t *shdict_region_find(const char *name) {
  if (name == NULL) return NULL;
  for (int i = 0; i < shdict_region.count; i++)
    if (strcmp(shdict_region.dir->dict[i].name, name) == 0) return shdict_region.dict[i];
  return NULL;
}

int shdict_region_owner_died(int pid) {
  int n = 0;
  for (int i = 0; i < shdict_region.count; i++) n += shdict_owner_died(shdict_region.dict[i], pid);
  return n;
}
