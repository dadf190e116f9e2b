/* scoreboard.c -- a page of memory each worker shares with the master: heartbeat, counters, activity.
 *
 * Apache's idea: the master learns how each worker is doing without asking it, so it learns it even
 * when the worker's event loop is stuck in a handler (which is exactly when the watchdog needs to know
 * what the worker was doing). The page is a memfd the master creates per worker and passes as fd 5. */
#define _GNU_SOURCE
#include "scoreboard.h"

#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int mf_scoreboard_create(mf_scoreboard_t **out) {
  int fd = memfd_create("moonfork-scoreboard", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (ftruncate(fd, sizeof(mf_scoreboard_t)) != 0) goto fail;
  void *p = mmap(NULL, sizeof(mf_scoreboard_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) goto fail;
  memset(p, 0, sizeof(mf_scoreboard_t));
  *out = p;
  return fd;
fail:
  close(fd);
  return -1;
}

mf_scoreboard_t *mf_scoreboard_attach(void) {
  void *p = mmap(NULL, sizeof(mf_scoreboard_t), PROT_READ | PROT_WRITE, MAP_SHARED, MF_FD_SCOREBOARD, 0);
  close(MF_FD_SCOREBOARD);
  return p == MAP_FAILED ? NULL : p;
}

void mf_scoreboard_release(mf_scoreboard_t *sb) {
  if (sb) munmap(sb, sizeof *sb);
}

uint64_t mf_monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void mf_scoreboard_activity(mf_scoreboard_t *sb, const char *a, size_t alen, const char *b, size_t blen) {
  if (sb == NULL) return;
  size_t cap = sizeof sb->activity - 1;
  if (alen > cap) alen = cap;
  memcpy(sb->activity, a, alen);
  size_t n = alen;
  if (b && n < cap) {
    sb->activity[n++] = ' ';
    if (blen > cap - n) blen = cap - n;
    memcpy(sb->activity + n, b, blen);
    n += blen;
  }
  sb->activity[n] = '\0';
}
