/* shdict_lock.c -- a shared dict's lock: a futex word holding its owner's pid, released for the dead.
 *
 * Why not a robust pthread mutex: it was measured (bench/shdict) at half of nginx's ngx_shmtx under
 * two workers hitting one dict: every contended unlock of a futex-backed mutex pays a FUTEX_WAKE,
 * and the robust list costs writes on every operation. This lock is nginx's idea (the owner's pid in
 * one word, taken with a compare-and-swap, a short spin) with a futex for waiters that spun long
 * enough, and the contended bit (Drepper, "Futexes Are Tricky") so an unlock calls the kernel only
 * when someone sleeps.
 *
 * A worker killed while it holds the lock: the master, which reaps every worker, calls
 * shdict_owner_died with its pid (the pid cannot be reused before the master reaped it, and only the
 * master's own children map the dict). If the word still names that pid, the master takes the lock,
 * marks the dict for repair and releases it; the next process to take it rebuilds the dict
 * (shdict_repair.c) before its operation. That is the EOWNERDEAD protocol, with the master as the one
 * that notices. Waiters sleep with a timeout, so a lost wake-up costs 10 ms, never a hang. */
#define _GNU_SOURCE
#include "shdict_internal.h"

#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define LOCK_CONTENDED 0x80000000u /* someone sleeps on the word: the unlock must wake */
#define LOCK_MASTER 0x7fffffffu    /* the master, between taking a dead worker's lock and releasing it */
#define LOCK_SPIN_MAX 1024 /* pauses between the last two looks at the word */
#define LOCK_YIELDS 64

static uint32_t lock_self_pid;
static int lock_atfork_set;

static void lock_forked(void) { lock_self_pid = 0; }

static uint32_t lock_self(void) {
  if (lock_self_pid == 0) {
    if (!lock_atfork_set) {
      pthread_atfork(NULL, NULL, lock_forked); /* a child must not lock in its parent's name */
      lock_atfork_set = 1;
    }
    lock_self_pid = (uint32_t)getpid();
  }
  return lock_self_pid;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static inline int lock_cas(uint32_t *w, uint32_t old, uint32_t new) {
  return __atomic_compare_exchange_n(w, &old, new, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static void lock_sleep(uint32_t *w, uint32_t val) {
  struct timespec ts = {0, 10 * 1000 * 1000};
  syscall(SYS_futex, w, FUTEX_WAIT, val, &ts, NULL, 0); /* shared: not FUTEX_PRIVATE_FLAG */
}

static void lock_wake(uint32_t *w, int n) { syscall(SYS_futex, w, FUTEX_WAKE, n, NULL, NULL, 0); }

/* The slow path. Spin with exponential backoff (looking at the word less and less often: the holder
 * keeps the lock, and its cache line, for a run of operations instead of handing it over on each),
 * then give the CPU away a few times, and only then sleep, marked as contended. */
static void lock_wait(uint32_t *w, uint32_t me) {
  for (int n = 1; n <= LOCK_SPIN_MAX; n <<= 1) {
    for (int i = 0; i < n; i++) cpu_relax();
    if (__atomic_load_n(w, __ATOMIC_RELAXED) == 0 && lock_cas(w, 0, me)) return;
  }
  for (int i = 0; i < LOCK_YIELDS; i++) {
    sched_yield();
    if (__atomic_load_n(w, __ATOMIC_RELAXED) == 0 && lock_cas(w, 0, me)) return;
  }
  for (;;) {
    uint32_t v = __atomic_load_n(w, __ATOMIC_RELAXED);
    if (v == 0) {
      if (lock_cas(w, 0, me | LOCK_CONTENDED)) return; /* others may sleep still: wake them later */
      continue;
    }
    if (!(v & LOCK_CONTENDED) && !lock_cas(w, v, v | LOCK_CONTENDED)) continue;
    lock_sleep(w, v | LOCK_CONTENDED);
  }
}

int shdict_lock(shdict_t *d) {
  uint32_t me = lock_self();
  if (!lock_cas(&d->lock, 0, me)) lock_wait(&d->lock, me);
  if (__atomic_load_n(&d->repair, __ATOMIC_ACQUIRE)) {
    /* The last owner died inside an operation: make the dict consistent first. */
    shd_repair(d);
    d->recoveries++;
    __atomic_store_n(&d->repair, 0, __ATOMIC_RELEASE);
  }
  return 0;
}

void shdict_unlock(shdict_t *d) {
  if (__atomic_exchange_n(&d->lock, 0, __ATOMIC_RELEASE) & LOCK_CONTENDED) lock_wake(&d->lock, 1);
}

int shdict_owner_died(shdict_t *d, int pid) {
  for (;;) {
    uint32_t v = __atomic_load_n(&d->lock, __ATOMIC_ACQUIRE);
    if ((v & ~LOCK_CONTENDED) != (uint32_t)pid || pid <= 0) return 0;
    if (lock_cas(&d->lock, v, LOCK_MASTER | LOCK_CONTENDED)) break;
  }
  __atomic_store_n(&d->repair, 1, __ATOMIC_RELEASE);
  __atomic_store_n(&d->lock, 0, __ATOMIC_RELEASE);
  lock_wake(&d->lock, INT_MAX);
  return 1;
}
