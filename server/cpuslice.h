/* cpuslice.h -- a worker's CPU time slice: asked of the kernel (Linux 6.12+) and kept by the worker. */
#ifndef MOONFORK_CPUSLICE_H
#define MOONFORK_CPUSLICE_H

#include <stdint.h>
#include <uv.h>

/* Asks the kernel to run the calling thread in slices of `us` microseconds (it clamps them to
 * 100 us..100 ms), keeping its policy and nice value. Returns 0; 1 when the thread's policy has no
 * slices to set (real-time, deadline, idle: left alone); or -errno. */
int cpuslice_set(uint64_t us);

/* The calling thread's slice in microseconds, or 0 when the kernel does not say (before Linux 6.12,
 * which has no per-task slices: then cpuslice_set succeeds and changes nothing). */
uint64_t cpuslice_get(void);

/* Keeps the slice in `loop` itself: after a loop turn that ran for longer than `us` microseconds
 * without sleeping, the thread yields the CPU (see cpuslice.c). Returns 0 or a libuv error. */
int cpuslice_keep(uv_loop_t *loop, uint64_t us);

/* How many times this worker yielded so (`yields` in `moonfork status --json`). */
uint64_t cpuslice_yields(void);

#endif
