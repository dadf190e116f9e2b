/* test_shdict_region.c -- unit tests for server/shdict_region.c (the master's memfd of dicts: added,
 * found, mapped again by a child from the fd as a worker does, a changed size kept) and for
 * mf_config_add_shared (listen()'s `shared` names and sizes). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../server/config.h"
#include "../server/shdict_region.h"
#include "test.h"

static void test_add_find(void) {
  char err[256];
  uint64_t old = 0;
  int fd = shdict_region_create(err, sizeof err);
  CHECK(fd >= 0 && shdict_region_fd() == fd);
  CHECK(shdict_region_add("sessions", 100 * 1024, &old, err, sizeof err) == 0);
  CHECK(shdict_region_add("hits", 64 * 1024, &old, err, sizeof err) == 0);
  CHECK(shdict_region_add("hits", 64 * 1024, &old, err, sizeof err) == 1);
  CHECK(shdict_region_add("hits", 128 * 1024, &old, err, sizeof err) == 2 && old == 64 * 1024);
  CHECK(shdict_region_count() == 2);
  CHECK_STR(shdict_region_name(1), "hits");
  shdict_t *d = shdict_region_find("sessions");
  CHECK(d != NULL && shdict_region_find("nope") == NULL && shdict_region_find(NULL) == NULL);
  CHECK(shdict_capacity(d) == 100 * 1024);
  shdict_val_t v = {.type = SHD_TSTRING, .len = 5};
  int f;
  CHECK(shdict_store(d, SHD_SET, "k", 1, &v, "hello", 0, &f) == 0);
  CHECK(shdict_region_owner_died(123456) == 0); /* nobody held a lock */

  /* a child maps the region from the fd, as a worker does, and sees (and writes) the same dicts */
  pid_t pid = fork();
  if (pid == 0) {
    int dup_fd = dup(fd);
    shdict_t *mine;
    char buf[16];
    shdict_val_t o;
    if (shdict_region_attach(dup_fd, err, sizeof err) != 0) _exit(1);
    if (fcntl(dup_fd, F_GETFD) != -1) _exit(2); /* attach closes the fd */
    mine = shdict_region_find("sessions");
    if (mine == NULL || shdict_get(mine, "k", 1, 0, &o, buf, sizeof buf) != 0 || o.len != 5) _exit(3);
    o = (shdict_val_t){.type = SHD_TNUMBER, .num = 7};
    if (shdict_store(shdict_region_find("hits"), SHD_SET, "n", 1, &o, NULL, 0, &f) != 0) _exit(4);
    _exit(0);
  }
  int status = -1;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  shdict_val_t o;
  CHECK(shdict_get(shdict_region_find("hits"), "n", 1, 0, &o, NULL, 0) == 0 && o.num == 7);
  CHECK(shdict_region_attach(open("/dev/null", O_RDONLY), err, sizeof err) == -1);
}

static void test_config_shared(void) {
  mf_config_t cfg;
  char err[256];
  mf_config_defaults(&cfg);
  CHECK(mf_config_add_shared(&cfg, "sessions", "10m", err, sizeof err) == 0);
  CHECK(mf_config_add_shared(&cfg, "_x9", "512k", err, sizeof err) == 0);
  CHECK(mf_config_add_shared(&cfg, "n", "65536", err, sizeof err) == 0);
  CHECK(cfg.nshared == 3 && cfg.shared[0].size == 10u << 20 && cfg.shared[1].size == 512u << 10);
  CHECK(mf_config_add_shared(&cfg, "sessions", "1m", err, sizeof err) == 0 && cfg.nshared == 3 &&
        cfg.shared[0].size == 1u << 20);
  CHECK(mf_config_add_shared(&cfg, "9lives", "1m", err, sizeof err) == -1);
  CHECK(strstr(err, "'9lives' must be letters") != NULL);
  CHECK(mf_config_add_shared(&cfg, "a-b", "1m", err, sizeof err) == -1);
  CHECK(mf_config_add_shared(&cfg, "", "1m", err, sizeof err) == -1);
  CHECK(mf_config_add_shared(&cfg, "x", "16k", err, sizeof err) == -1);
  CHECK(strstr(err, "from 32k to 16g") != NULL);
  CHECK(mf_config_add_shared(&cfg, "x", "17g", err, sizeof err) == -1);
  CHECK(mf_config_add_shared(&cfg, "x", "ten", err, sizeof err) == -1);
  char name[80];
  memset(name, 'a', 64), name[64] = '\0';
  CHECK(mf_config_add_shared(&cfg, name, "1m", err, sizeof err) == -1);
  for (int i = cfg.nshared; i < MF_SHARED_MAX; i++) {
    snprintf(name, sizeof name, "d%d", i);
    CHECK(mf_config_add_shared(&cfg, name, "1m", err, sizeof err) == 0);
  }
  CHECK(mf_config_add_shared(&cfg, "onemore", "1m", err, sizeof err) == -1);
}

int main(void) {
  test_add_find();
  test_config_shared();
  TEST_DONE();
}
