/* test_shdict.c -- unit tests for server/shdict*.c: every operation, expiry on an injected clock, LRU
 * eviction order and forcible, safe_* "no memory", a long mixed-size run that must never fail while
 * free space is several times the value, and a lock owner killed while it holds the lock. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../server/shdict.h"
#include "../server/shdict_internal.h"
#include "test.h"

static uint64_t fake_now = 1000000;
static uint64_t fake_clock(void) { return fake_now; }

static shdict_t *new_dict(size_t size) {
  /* MAP_SHARED: forked children see the same dict, as workers do */
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED || shdict_init(p, size) != 0) return NULL;
  return shdict_open(p, size);
}

static int set_str(shdict_t *d, int op, const char *k, const char *s, int64_t ms, int *forcible) {
  shdict_val_t v = {.type = SHD_TSTRING, .len = strlen(s)};
  return shdict_store(d, op, k, strlen(k), &v, s, ms, forcible);
}

static const char *get_str(shdict_t *d, const char *k, int stale) {
  static char buf[8192];
  shdict_val_t v = {0};
  int r = shdict_get(d, k, strlen(k), stale, &v, buf, sizeof buf - 1);
  if (r != 0 || v.type != SHD_TSTRING) return NULL;
  buf[v.len] = '\0';
  return buf;
}

static void test_set_get_types(void) {
  shdict_t *d = new_dict(1 << 20);
  CHECK(d != NULL);
  CHECK(shdict_open((char *)d, 12345) == NULL);
  int f = 1;
  CHECK(set_str(d, SHD_SET, "a", "hello", 0, &f) == 0 && f == 0);
  CHECK_STR(get_str(d, "a", 0), "hello");
  shdict_val_t v = {.type = SHD_TNUMBER, .num = 3.5, .flags = 7}, o = {0};
  CHECK(shdict_store(d, SHD_SET, "n", 1, &v, NULL, 0, &f) == 0);
  CHECK(shdict_get(d, "n", 1, 0, &o, NULL, 0) == 0 && o.type == SHD_TNUMBER && o.num == 3.5 && o.flags == 7);
  v = (shdict_val_t){.type = SHD_TBOOLEAN, .num = 1};
  CHECK(shdict_store(d, SHD_SET, "b", 1, &v, NULL, 0, &f) == 0);
  CHECK(shdict_get(d, "b", 1, 0, &o, NULL, 0) == 0 && o.type == SHD_TBOOLEAN && o.num == 1);
  char small[2];
  CHECK(shdict_get(d, "a", 1, 0, &o, small, sizeof small) == SHD_EBUF && o.len == 5);
  CHECK(shdict_get(d, "zz", 2, 0, &o, NULL, 0) == SHD_ENOTFOUND);
  CHECK(shdict_get(d, "", 0, 0, &o, NULL, 0) == SHD_EKEY);
  /* a long key and a value spanning many chunks */
  char key[SHD_KEY_MAX + 1], val[5000];
  memset(key, 'k', sizeof key), memset(val, 'v', sizeof val - 1), val[sizeof val - 1] = '\0';
  v = (shdict_val_t){.type = SHD_TSTRING, .len = strlen(val)};
  CHECK(shdict_store(d, SHD_SET, key, SHD_KEY_MAX, &v, val, 0, &f) == 0);
  CHECK(shdict_store(d, SHD_SET, key, SHD_KEY_MAX + 1, &v, val, 0, &f) == SHD_EKEY);
  char out[5000];
  CHECK(shdict_get(d, key, SHD_KEY_MAX, 0, &o, out, sizeof out) == 0 && o.len == 4999 && memcmp(out, val, 4999) == 0);
  /* replace with another size, delete */
  CHECK(set_str(d, SHD_SET, "a", "a much longer value than before, spanning chunks", 0, &f) == 0);
  CHECK_STR(get_str(d, "a", 0), "a much longer value than before, spanning chunks");
  v = (shdict_val_t){.type = SHD_TNIL};
  CHECK(shdict_store(d, SHD_SET, "a", 1, &v, NULL, 0, &f) == 0 && get_str(d, "a", 0) == NULL);
  CHECK(shdict_check(d) == 0);
}

static void test_add_replace_incr(void) {
  shdict_t *d = new_dict(1 << 16);
  int f;
  CHECK(set_str(d, SHD_ADD, "k", "1", 0, &f) == 0);
  CHECK(set_str(d, SHD_ADD, "k", "2", 0, &f) == SHD_EEXISTS);
  CHECK(set_str(d, SHD_SAFE_ADD, "k", "2", 0, &f) == SHD_EEXISTS);
  CHECK(set_str(d, SHD_REPLACE, "k", "3", 0, &f) == 0 && strcmp(get_str(d, "k", 0), "3") == 0);
  CHECK(set_str(d, SHD_REPLACE, "nope", "3", 0, &f) == SHD_ENOTFOUND);
  double n = 0;
  CHECK(shdict_incr(d, "c", 1, 1, 0, 0, 0, &n, &f) == SHD_ENOTFOUND);
  CHECK(shdict_incr(d, "c", 1, 2, 1, 10, 0, &n, &f) == 0 && n == 12);
  CHECK(shdict_incr(d, "c", 1, -0.5, 1, 10, 0, &n, &f) == 0 && n == 11.5);
  CHECK(shdict_incr(d, "k", 1, 1, 0, 0, 0, &n, &f) == SHD_ENOTNUM);
  CHECK(shdict_check(d) == 0);
}

static void test_expiry(void) {
  shdict_set_clock(fake_clock);
  shdict_t *d = new_dict(1 << 16);
  int f;
  int64_t ms = -1;
  CHECK(set_str(d, SHD_SET, "e", "v", 1500, &f) == 0);
  CHECK(shdict_ttl(d, "e", 1, &ms) == 0 && ms == 1500);
  fake_now += 1499;
  CHECK_STR(get_str(d, "e", 0), "v");
  fake_now += 1;
  CHECK(get_str(d, "e", 0) == NULL);
  CHECK_STR(get_str(d, "e", 1), "v"); /* get_stale */
  CHECK(shdict_ttl(d, "e", 1, &ms) == SHD_ENOTFOUND);
  CHECK(set_str(d, SHD_ADD, "e", "w", 0, &f) == 0); /* add over an expired entry */
  CHECK(shdict_ttl(d, "e", 1, &ms) == 0 && ms == 0);
  CHECK(shdict_expire(d, "e", 1, 10) == 0 && shdict_ttl(d, "e", 1, &ms) == 0 && ms == 10);
  CHECK(shdict_expire(d, "missing", 7, 10) == SHD_ENOTFOUND);
  double n;
  CHECK(shdict_incr(d, "i", 1, 1, 1, 0, 5, &n, &f) == 0 && shdict_ttl(d, "i", 1, &ms) == 0 && ms == 5);
  CHECK(set_str(d, SHD_SET, "keep", "v", 0, &f) == 0);
  fake_now += 20;
  CHECK(shdict_flush_expired(d, 0) == 2);
  CHECK_STR(get_str(d, "keep", 0), "v");
  CHECK(shdict_flush_all(d) == 0 && get_str(d, "keep", 0) == NULL);
  CHECK_STR(get_str(d, "keep", 1), "v"); /* expired, as OpenResty's flush_all leaves it */
  CHECK(shdict_flush_expired(d, 0) == 1 && get_str(d, "keep", 1) == NULL);
  CHECK(shdict_check(d) == 0);
  shdict_set_clock(NULL);
}

static void test_lru_eviction(void) {
  shdict_t *d = new_dict(SHD_MIN_SIZE);
  char k[32], v[200];
  memset(v, 'x', sizeof v - 1), v[sizeof v - 1] = '\0';
  int f = 0, i;
  for (i = 0; f == 0; i++) { /* fill until the first eviction */
    snprintf(k, sizeof k, "k%d", i);
    if (i == 3) CHECK(get_str(d, "k0", 0) != NULL); /* k0 becomes recent */
    CHECK(set_str(d, SHD_SET, k, v, 0, &f) == 0);
  }
  CHECK(f == 1);
  CHECK(get_str(d, "k0", 0) != NULL); /* touched: kept */
  CHECK(get_str(d, "k1", 0) == NULL); /* least recently used: evicted first */
  CHECK(get_str(d, "k2", 0) != NULL);
  snprintf(k, sizeof k, "k%d", i);
  CHECK(set_str(d, SHD_SAFE_SET, k, v, 0, &f) == SHD_ENOMEM);
  CHECK(set_str(d, SHD_SAFE_ADD, k, v, 0, &f) == SHD_ENOMEM);
  int64_t len;
  shdict_val_t e = {.type = SHD_TSTRING, .len = 150};
  CHECK(shdict_push(d, "list", 4, 1, &e, v, &len) == SHD_ENOMEM); /* a push never evicts */
  CHECK(shdict_check(d) == 0);
}

static void test_lists(void) {
  shdict_t *d = new_dict(1 << 16);
  int64_t len = 0;
  shdict_val_t a = {.type = SHD_TSTRING, .len = 3}, n = {.type = SHD_TNUMBER, .num = 9}, o;
  CHECK(shdict_push(d, "l", 1, 1, &a, "one", &len) == 0 && len == 1);
  CHECK(shdict_push(d, "l", 1, 0, &n, NULL, &len) == 0 && len == 2);
  CHECK(shdict_push(d, "l", 1, 1, &a, "two", &len) == 0 && len == 3);
  CHECK(shdict_llen(d, "l", 1, &len) == 0 && len == 3);
  char buf[16];
  CHECK(shdict_get(d, "l", 1, 0, &o, buf, sizeof buf) == SHD_ELIST);
  CHECK(shdict_pop(d, "l", 1, 0, &o, buf, sizeof buf) == 0 && o.type == SHD_TNUMBER && o.num == 9);
  CHECK(shdict_pop(d, "l", 1, 1, &o, buf, sizeof buf) == 0 && o.len == 3 && memcmp(buf, "two", 3) == 0);
  CHECK(shdict_check(d) == 0);
  CHECK(shdict_pop(d, "l", 1, 1, &o, buf, sizeof buf) == 0 && memcmp(buf, "one", 3) == 0);
  CHECK(shdict_pop(d, "l", 1, 1, &o, buf, sizeof buf) == SHD_ENOTFOUND);
  CHECK(shdict_llen(d, "l", 1, &len) == 0 && len == 0);
  int f;
  CHECK(set_str(d, SHD_SET, "s", "x", 0, &f) == 0);
  CHECK(shdict_push(d, "s", 1, 1, &a, "one", &len) == SHD_ENOTLIST);
  CHECK(shdict_llen(d, "s", 1, &len) == SHD_ENOTLIST);
  CHECK(shdict_check(d) == 0);
}

static void test_keys(void) {
  shdict_t *d = new_dict(1 << 20);
  int f, total = 0;
  char k[32];
  for (int i = 0; i < 3000; i++) snprintf(k, sizeof k, "key%d", i), set_str(d, SHD_SET, k, "v", 0, &f);
  uint32_t cur = 0;
  char buf[4096];
  size_t used;
  while (cur < shdict_buckets(d)) {
    int n = shdict_keys(d, &cur, 0, buf, sizeof buf, &used);
    CHECK(n >= 0);
    if (n < 0) break;
    total += n;
  }
  CHECK(total == 3000);
  cur = 0;
  CHECK(shdict_keys(d, &cur, 0, buf, 3, &used) == SHD_EBUF || used == 0);
}

static long rss_kb(void) {
  long pages = 0, res = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
  fclose(f);
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* A 512 MB dict touches its chunks only as they are used: formatting it writes the buckets (8 MB),
 * not the chunks, and a few sets touch a few pages. */
static void test_memory_touched_lazily(void) {
  size_t size = (size_t)512 << 20;
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  CHECK(p != MAP_FAILED);
  if (p == MAP_FAILED) return;
  long before = rss_kb();
  CHECK(shdict_init(p, size) == 0);
  shdict_t *d = shdict_open(p, size);
  int f;
  for (int i = 0; i < 1000; i++) {
    char k[16];
    snprintf(k, sizeof k, "k%d", i);
    set_str(d, SHD_SET, k, "value", 0, &f);
  }
  CHECK(rss_kb() - before < 32 * 1024);
  CHECK(shdict_free_space(d) > (uint64_t)400 << 20);
  CHECK(shdict_check(d) == 0);
  munmap(p, size);
}

/* A long run of sets of mixed sizes (16 B to 8 KiB) into a dict kept about half full: safe_set must
 * never say "no memory" while free space is at least three times the value. */
static void test_fragmentation_run(void) {
  shdict_t *d = new_dict(4 << 20);
  static char val[8192];
  memset(val, 'f', sizeof val);
  srand(42);
  int f, fails = 0, ok = 0;
  char k[32];
  for (int i = 0; i < 200000; i++) {
    snprintf(k, sizeof k, "k%d", rand() % 2000);
    size_t len = rand() % 4 == 0 ? 16 + rand() % 8176 : 16 + rand() % 300;
    shdict_val_t v = {.type = SHD_TSTRING, .len = len};
    int free_enough = shdict_free_space(d) >= 3 * (len + 64);
    int r = shdict_store(d, SHD_SAFE_SET, k, strlen(k), &v, val, 0, &f);
    if (r == SHD_ENOMEM && free_enough) fails++;
    if (r == 0) ok++;
    if (rand() % 3 == 0) { /* deletes keep it from filling up */
      snprintf(k, sizeof k, "k%d", rand() % 2000);
      v.type = SHD_TNIL;
      shdict_store(d, SHD_SET, k, strlen(k), &v, NULL, 0, &f);
    }
  }
  CHECK(fails == 0);
  CHECK(ok > 100000);
  CHECK(shdict_check(d) == 0);
}

/* A child takes the lock, tears an operation (chunks off the free list, an entry half linked) and is
 * killed holding it. The parent plays the master (shdict_owner_died once it reaped the child): its
 * next call must not hang, must repair, and must find the dict sound. */
static void test_owner_killed_holding_lock(void) {
  shdict_t *d = new_dict(1 << 18);
  int f;
  CHECK(set_str(d, SHD_SET, "before", "kept", 0, &f) == 0);
  int p[2];
  CHECK(pipe(p) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    shdict_val_t v = {.type = SHD_TSTRING, .len = 3};
    shdict_store(d, SHD_SET, "x", 1, &v, "abc", 0, &f);
    shdict_lock(d);
    /* tear: chunks off the free list as an allocation takes them, an entry out of the LRU, a bogus
     * entry linked into a bucket */
    uint32_t bogus = shd_alloc(d, 3);
    shd_lru_unlink(d, d->lru_head);
    shd_entry(d, bogus)->klen = 0;
    shd_entry(d, bogus)->hnext = shd_buckets(d)[0];
    shd_buckets(d)[0] = bogus;
    if (write(p[1], "L", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  char c;
  CHECK(read(p[0], &c, 1) == 1);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  CHECK(shdict_owner_died(d, pid + 1) == 0); /* another pid: not the owner, nothing happens */
  CHECK(shdict_owner_died(d, pid) == 1);     /* what the master does once it reaped a worker */
  CHECK(shdict_owner_died(d, pid) == 0);
  const char *s = get_str(d, "before", 0);
  CHECK(s != NULL && strcmp(s, "kept") == 0);
  s = get_str(d, "x", 0);
  CHECK(s != NULL && strcmp(s, "abc") == 0);
  shdict_stats_t st;
  shdict_stats(d, &st);
  CHECK(st.recoveries == 1 && st.keys == 2);
  CHECK(shdict_check(d) == 0);
  close(p[0]), close(p[1]);
}

/* Children hammer the dict and are SIGKILLed at random points, many times (each reaped as the master
 * does): the dict stays sound and usable, and keys nobody touched keep their values. */
static void test_killed_mid_operation_loop(void) {
  shdict_t *d = new_dict(1 << 18);
  int f;
  CHECK(set_str(d, SHD_SET, "stable", "yes", 0, &f) == 0);
  for (int round = 0; round < 40; round++) {
    pid_t pid = fork();
    if (pid == 0) {
      char k[32], val[600];
      memset(val, 'z', sizeof val);
      double n;
      int64_t len;
      for (unsigned i = 0;; i++) {
        snprintf(k, sizeof k, "k%u", i % 100);
        shdict_val_t v = {.type = SHD_TSTRING, .len = i % 600};
        shdict_store(d, SHD_SET, k, strlen(k), &v, val, 0, &f);
        shdict_incr(d, "count", 5, 1, 1, 0, 0, &n, &f);
        shdict_push(d, "q", 1, i & 1, &v, val, &len);
        if (len > 20) shdict_pop(d, "q", 1, 0, &v, val, sizeof val);
      }
    }
    usleep(1000 + (unsigned)(rand() % 5000));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    shdict_owner_died(d, pid);
    double n;
    CHECK(shdict_incr(d, "count", 5, 1, 1, 0, 0, &n, &f) == 0); /* never hangs */
    CHECK(shdict_check(d) == 0);
  }
  const char *s = get_str(d, "stable", 0);
  CHECK(s != NULL && strcmp(s, "yes") == 0);
}

int main(void) {
  test_set_get_types();
  test_add_replace_incr();
  test_expiry();
  test_lru_eviction();
  test_lists();
  test_keys();
  test_memory_touched_lazily();
  test_fragmentation_run();
  test_owner_killed_holding_lock();
  test_killed_mid_operation_loop();
  TEST_DONE();
}
