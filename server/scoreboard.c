/* scoreboard.c -- memory every worker shares with the master and each other: heartbeats, counters.
 *
 * Apache's idea: the master learns how each worker is doing without asking it, so it learns it even
 * when the worker's event loop is stuck in a handler (which is exactly when the watchdog needs to know
 * what the worker was doing). One memfd holds an entry per worker; the master passes it as MF_FD_SCOREBOARD and
 * tells each worker its entry. Workers read each other's connection counts to share the accept queue
 * evenly (http.c). */
#define _GNU_SOURCE
#include "scoreboard.h"

#include "fds.h"

#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define BALANCE_STALE_MS 400 /* an entry whose heartbeat (every 100 ms) is older is not counted: a busy or stuck worker */

int scoreboard_create(scoreboard_board_t **out) {
  int fd = memfd_create("moonfork-scoreboard", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (ftruncate(fd, sizeof(scoreboard_board_t)) != 0) goto fail_close;
  void *p = mmap(NULL, sizeof(scoreboard_board_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) goto fail_close;
  *out = p; /* a new memfd reads as zeros */
  return fd;
fail_close:
  close(fd);
  return -1;
}

int scoreboard_take(scoreboard_board_t *b) {
  for (int i = 1; i < MF_SB_ENTRIES; i++) {
    if (b->e[i].state != MF_SB_FREE) continue;
    memset(&b->e[i], 0, sizeof b->e[i]);
    b->e[i].state = MF_SB_STARTING;
    if ((uint32_t)i > b->hi) b->hi = (uint32_t)i;
    return i;
  }
  return 0;
}

void scoreboard_release(scoreboard_board_t *b, int i) {
  if (i <= 0 || i >= MF_SB_ENTRIES) return;
  memset(&b->e[i], 0, sizeof b->e[i]);
  uint32_t hi = b->hi;
  while (hi > 0 && b->e[hi].state == MF_SB_FREE) hi--;
  b->hi = hi;
}

scoreboard_board_t *scoreboard_attach(void) {
  void *p = mmap(NULL, sizeof(scoreboard_board_t), PROT_READ | PROT_WRITE, MAP_SHARED, MF_FD_SCOREBOARD, 0);
  close(MF_FD_SCOREBOARD);
  return p == MAP_FAILED ? NULL : p;
}

int scoreboard_fewer_elsewhere(const scoreboard_board_t *b, int self, uint64_t mine) {
  uint64_t now = scoreboard_now_ms();
  uint32_t hi = b->hi < MF_SB_ENTRIES ? b->hi : MF_SB_ENTRIES - 1;
  /* Slack: only a clear imbalance counts (8 connections, or an eighth of a large count). Counts move
   * all the time under short connections; a tighter bound makes workers take turns pausing. */
  uint64_t slack = 8 + mine / 8;
  for (uint32_t i = 1; i <= hi; i++) {
    const scoreboard_entry_t *e = &b->e[i];
    if ((int)i == self || e->state != MF_SB_READY) continue;
    uint64_t beat = e->beat_ms;
    if (beat == 0 || now - beat > BALANCE_STALE_MS) continue;
    if (e->connections + slack < mine) return 1;
  }
  return 0;
}

uint64_t scoreboard_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void scoreboard_activity(scoreboard_entry_t *sb, const char *a, size_t alen, const char *b, size_t blen) {
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
