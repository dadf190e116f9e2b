/* cpuslice.c -- a worker's CPU time slice: asked of the kernel (EEVDF custom slices, Linux 6.12+) and
 * kept by the worker itself (it yields the CPU after a slice of work without a pause).
 *
 * Linux's fair scheduler (EEVDF) gives every runnable task a slice, a few milliseconds by default.
 * When more tasks want the CPU than there are cores (clients, other services, a batch job on the
 * same machine), a request that arrives while its worker waits can wait for other tasks' whole
 * slices. A task may ask for a shorter slice (sched_setattr with sched_runtime, Linux 6.12): it gets
 * an earlier deadline, so it runs sooner when woken, and yields sooner when it runs long. Its share
 * of the CPU is unchanged. A worker's work per wake-up is short (parse, run a handler, send), so
 * a short slice takes the scheduler's delays out of its latency. Older kernels accept the call and
 * ignore the field; sched_getattr then reports 0. glibc 2.36 has no wrapper: raw syscalls. */
#define _GNU_SOURCE
#include "cpuslice.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SCHED_BATCH
#define SCHED_BATCH 3
#endif

/* struct sched_attr of <linux/sched/types.h>, first version (48 bytes), which every kernel takes */
typedef struct {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime; /* for SCHED_OTHER and SCHED_BATCH: the slice, in ns (Linux 6.12+) */
  uint64_t sched_deadline;
  uint64_t sched_period;
} sched_attr_t;

static int get_attr(sched_attr_t *a) {
  memset(a, 0, sizeof *a);
  return (int)syscall(SYS_sched_getattr, 0, a, (unsigned)sizeof *a, 0u);
}

int cpuslice_set(uint64_t us) {
  sched_attr_t a;
  if (get_attr(&a) != 0) return -errno;
  if (a.sched_policy != SCHED_OTHER && a.sched_policy != SCHED_BATCH) return 1;
  a.size = sizeof a;
  a.sched_flags &= 1; /* SCHED_FLAG_RESET_ON_FORK, kept as it was */
  a.sched_runtime = us * 1000;
  a.sched_deadline = a.sched_period = 0;
  if (syscall(SYS_sched_setattr, 0, &a, 0u) != 0) return -errno;
  return 0;
}

uint64_t cpuslice_get(void) {
  sched_attr_t a;
  if (get_attr(&a) != 0) return 0;
  if (a.sched_policy != SCHED_OTHER && a.sched_policy != SCHED_BATCH) return 0;
  return a.sched_runtime / 1000;
}

/* Keeping the slice. The kernel looks at a running task's slice only at its timer tick (every 4 ms
 * at HZ=250; the HRTICK feature that would look sooner is off by default), so a worker that always
 * finds work, under saturation, keeps the core for a whole tick whatever slice it asked for, while
 * the task that shares its core (the other worker, a client, another service) waits, with its
 * requests. So the worker keeps its slice itself: after a loop turn, if it has been running without
 * sleeping in the poll for longer than its slice, it calls sched_yield(). EEVDF then moves its
 * deadline one slice on and runs a waiting task whose turn it is; with nobody waiting the call
 * returns at once. Its share of the CPU is the same; it only comes in shorter pieces. Sleeping is
 * read off libuv's idle-time metric, which grows only when the poll blocks: a run starts when the
 * poll that slept returned (the time before the poll plus the sleep). */
static struct {
  uv_prepare_t prepare;
  uv_check_t check;
  uint64_t slice_ns, before_poll, since, idle, yields;
} cpuslice;

static void on_before_poll(uv_prepare_t *p) {
  (void)p;
  cpuslice.before_poll = uv_hrtime();
}

static void on_after_turn(uv_check_t *c) {
  uint64_t idle = uv_metrics_idle_time(c->loop), now = uv_hrtime();
  if (idle != cpuslice.idle) { /* it slept in this turn's poll: the run began when the poll returned */
    cpuslice.since = cpuslice.before_poll + (idle - cpuslice.idle);
    cpuslice.idle = idle;
  }
  if (now - cpuslice.since >= cpuslice.slice_ns) {
    sched_yield();
    cpuslice.yields++;
    cpuslice.since = uv_hrtime();
  }
}

int cpuslice_keep(uv_loop_t *loop, uint64_t us) {
  int r = uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
  if (r == 0) r = uv_prepare_init(loop, &cpuslice.prepare);
  if (r == 0) r = uv_check_init(loop, &cpuslice.check);
  if (r != 0) return r;
  cpuslice.slice_ns = us * 1000;
  cpuslice.idle = uv_metrics_idle_time(loop);
  cpuslice.before_poll = cpuslice.since = uv_hrtime();
  uv_prepare_start(&cpuslice.prepare, on_before_poll);
  uv_check_start(&cpuslice.check, on_after_turn);
  uv_unref((uv_handle_t *)&cpuslice.prepare);
  uv_unref((uv_handle_t *)&cpuslice.check);
  return 0;
}

uint64_t cpuslice_yields(void) { return cpuslice.yields; }
