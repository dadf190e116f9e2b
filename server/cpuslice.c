/* cpuslice.c -- the CPU time slice a worker asks the kernel for (EEVDF custom slices, Linux 6.12+).
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

int mf_cpu_slice_set(uint64_t us) {
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

uint64_t mf_cpu_slice_get(void) {
  sched_attr_t a;
  if (get_attr(&a) != 0) return 0;
  if (a.sched_policy != SCHED_OTHER && a.sched_policy != SCHED_BATCH) return 0;
  return a.sched_runtime / 1000;
}
