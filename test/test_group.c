/* test_group.c -- unit tests for server/group.c with a kind of child that is not a worker: a shell
 * that says "ready" on its channel, reads one line back and exits. Spawn, ready, retire, exit and the
 * freeing of each child (one count of open handles) are seen through the kind's hooks; a child that
 * cannot be spawned is freed and its slot respawned later. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "../server/group.h"
#include "test.h"

static struct {
  int prepared, released, ready, left, changed, empty;
  char heard[64]; /* what the child read from its channel */
  const char *script;
  uv_timer_t guard;
} seen;

static char out_path[] = "/tmp/moonfork-test-group.XXXXXX";

static int job_prepare(child_t *c, group_spawn_t *sp, char *err, size_t errlen) {
  (void)c, (void)err, (void)errlen;
  sp->argv[0] = "sh";
  sp->argv[1] = "-c";
  sp->argv[2] = (char *)seen.script;
  sp->argv[3] = out_path;
  sp->argv[4] = NULL;
  seen.prepared++;
  return 0;
}

static void job_release(child_t *c) {
  (void)c;
  seen.released++;
}

static void job_ready(child_t *c) {
  seen.ready++;
  group_retire(c, "the test is done with it");
}

static void job_leave(child_t *c) {
  (void)c;
  seen.left++;
}

static void job_change(group_t *g) {
  (void)g;
  seen.changed++;
}

static void job_replaced(group_t *g, group_slot_t *s, int ok, const char *why) {
  (void)g, (void)s, (void)ok, (void)why;
}

static void job_empty(group_t *g) {
  (void)g;
  seen.empty++;
}

static const group_kind_t job_kind = {"job",     job_prepare, job_release, job_ready, job_leave,
                                      job_change, job_replaced, job_empty, NULL};

static void on_guard(uv_timer_t *t) { uv_stop(t->loop); }

/* Runs the loop until cond holds or 5 s have passed. */
#define RUN_UNTIL(loop, cond)                                 \
  do {                                                        \
    uv_timer_start(&seen.guard, on_guard, 5000, 0);           \
    while (!(cond) && uv_run((loop), UV_RUN_ONCE) != 0) {     \
      if (uv_now(loop) - start > 5000) break;                 \
    }                                                         \
    uv_timer_stop(&seen.guard);                               \
  } while (0)

static void test_lifecycle(uv_loop_t *loop) {
  static group_t g;
  uint64_t start = uv_now(loop);
  /* says ready on fd 4 (its channel), writes the first line it hears to $0, exits 3 */
  seen.script = "echo ready >&4; read line <&4; echo \"$line\" >\"$0\"; exit 3";
  group_init(&g, loop, &job_kind, "/bin/sh");
  CHECK(group_resize(&g, 1) == 0);
  CHECK(seen.prepared == 1 && g.children != NULL && g.slots[0]->cur == g.children);
  CHECK(group_live(&g) == 1);
  RUN_UNTIL(loop, seen.released == 1);
  CHECK(seen.ready == 1);
  CHECK(seen.left == 1);    /* retired (its exit while retired leaves nothing more to leave) */
  CHECK(seen.released == 1); /* process handle and channel both closed: freed */
  CHECK(g.children == NULL && g.slots[0]->cur == NULL);
  CHECK(g.restarts == 0); /* a retired child's exit is not a restart */
  FILE *f = fopen(out_path, "r");
  CHECK(f != NULL);
  if (f) {
    CHECK(fgets(seen.heard, sizeof seen.heard, f) != NULL);
    fclose(f);
  }
  CHECK_STR(seen.heard, "retire\n");
  group_stop(&g);
}

static void test_spawn_failure(uv_loop_t *loop) {
  static group_t g;
  uint64_t start = uv_now(loop);
  int released = seen.released, prepared = seen.prepared;
  group_init(&g, loop, &job_kind, "/nonexistent/moonfork-test");
  CHECK(group_resize(&g, 1) == 0);
  RUN_UNTIL(loop, seen.prepared >= prepared + 2 && seen.released >= released + 2);
  CHECK(seen.prepared >= prepared + 2);   /* respawned after the backoff */
  CHECK(seen.released >= released + 2);   /* each failed child freed */
  CHECK(g.slots[0]->backoff_ms >= 200);   /* doubling: the deaths come quickly */
  group_stop(&g);
  RUN_UNTIL(loop, g.children == NULL);
  CHECK(g.children == NULL && group_live(&g) == 0);
}

int main(void) {
  uv_loop_t *loop = uv_default_loop();
  int fd = mkstemp(out_path);
  if (fd < 0) return 77;
  close(fd);
  signal(SIGPIPE, SIG_IGN);
  uv_timer_init(loop, &seen.guard);
  test_lifecycle(loop);
  test_spawn_failure(loop);
  unlink(out_path);
  TEST_DONE();
}
