/* cpuslice.h -- the CPU time slice a worker asks the kernel for (EEVDF custom slices, Linux 6.12+). */
#ifndef MOONFORK_CPUSLICE_H
#define MOONFORK_CPUSLICE_H

#include <stdint.h>

/* Asks the kernel to run the calling thread in slices of `us` microseconds (it clamps them to
 * 100 us..100 ms), keeping its policy and nice value. Returns 0; 1 when the thread's policy has no
 * slices to set (real-time, deadline, idle: left alone); or -errno. */
int mf_cpu_slice_set(uint64_t us);

/* The calling thread's slice in microseconds, or 0 when the kernel does not say (before Linux 6.12,
 * which has no per-task slices: then mf_cpu_slice_set succeeds and changes nothing). */
uint64_t mf_cpu_slice_get(void);

#endif
