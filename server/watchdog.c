/* watchdog.c -- the master's tick: stuck or slow-starting workers killed, and recycling.
 *
 * Once a second the master looks at each worker's scoreboard entry (scoreboard.c), which the worker's
 * heartbeat timer writes ten times a second. A worker whose heartbeat is older than --watchdog has a
 * loop stuck in a handler: it is killed (SIGKILL; the group respawns it) and the log says what it was
 * running. A replacement not ready within a minute is killed too. A worker over --max-memory is
 * replaced gracefully, and one that asked to be replaced (--max-requests) but could not be at once (a
 * reload or another replacement was in the way) is retried here. The tick also names a first mesh
 * leader once it is due (leader.c). */
#include "watchdog.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "leader.h"
#include "log.h"
#include "master.h"
#include "scoreboard.h"

#define WATCHDOG_TICK_MS 1000
#define START_TIMEOUT_MS 60000 /* a replacement that is not ready by then is given up */

static struct {
  uv_timer_t tick;
  group_t *group;
} watchdog;

uint64_t watchdog_rss_kb(int pid) {
  char path[64];
  unsigned long size = 0, resident = 0;
  snprintf(path, sizeof path, "/proc/%d/statm", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
  fclose(f);
  return (uint64_t)resident * (uint64_t)(sysconf(_SC_PAGESIZE) / 1024);
}

/* A replacement that takes too long to start. Returns 1 when it was killed. */
static int check_start(child_t *c) {
  if (c->state != CHILD_STARTING || !c->slot || c->slot->next != c ||
      uv_now(c->group->loop) - c->started_ms <= START_TIMEOUT_MS)
    return 0;
  mf_log("worker %d (pid %d) not ready after %d s: killing it", c->id, c->pid, START_TIMEOUT_MS / 1000);
  snprintf(c->error, sizeof c->error, "not ready after %d s", START_TIMEOUT_MS / 1000);
  uv_process_kill(&c->proc, SIGKILL);
  return 1;
}

/* A loop that has not turned for --watchdog. Returns 1 when it was killed. */
static int check_beat(child_t *c, const scoreboard_entry_t *sb, uint64_t now) {
  uint64_t beat = sb->beat_ms, limit = master_config()->watchdog_ms;
  if (limit == 0 || beat == 0 || now <= beat || now - beat <= limit) return 0;
  char act[sizeof sb->activity];
  memcpy(act, sb->activity, sizeof act);
  act[sizeof act - 1] = '\0';
  mf_log("watchdog: worker %d (pid %d) has not turned its event loop for %.1f s (last running: %s): killing it",
         c->id, c->pid, (double)(now - beat) / 1000.0, act[0] ? act : "nothing");
  uv_process_kill(&c->proc, SIGKILL);
  return 1;
}

static void check_recycle(child_t *c) {
  long max_mb = master_config()->max_memory_mb;
  char why[128];
  if (c->recycle_why[0]) {
    group_recycle(c, c->recycle_why);
  } else if (max_mb > 0) {
    uint64_t kb = watchdog_rss_kb(c->pid);
    if (kb > (uint64_t)max_mb * 1024) {
      snprintf(why, sizeof why, "uses %llu MB (--max-memory)", (unsigned long long)(kb / 1024));
      group_recycle(c, why);
    }
  }
}

static void on_tick(uv_timer_t *t) {
  group_t *g = watchdog.group;
  uint64_t now = scoreboard_now_ms();
  (void)t;
  leader_settle(g, master_announced());
  for (child_t *c = g->children; c; c = c->next) {
    const scoreboard_entry_t *sb = c->data;
    if (!group_child_running(c) || sb == NULL) continue;
    if (check_start(c) || c->state == CHILD_STARTING || check_beat(c, sb, now)) continue;
    if (c->state == CHILD_READY) check_recycle(c);
  }
}

void watchdog_start(group_t *g) {
  watchdog.group = g;
  uv_timer_init(g->loop, &watchdog.tick);
  uv_timer_start(&watchdog.tick, on_tick, WATCHDOG_TICK_MS, WATCHDOG_TICK_MS);
  uv_unref((uv_handle_t *)&watchdog.tick);
}
