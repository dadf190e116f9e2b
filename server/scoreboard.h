/* scoreboard.h -- memory every worker shares with the master and each other: heartbeats, counters. */
#ifndef MOONFORK_SCOREBOARD_H
#define MOONFORK_SCOREBOARD_H

#include <stddef.h>
#include <stdint.h>

#define MF_SB_ENTRIES 1024 /* entry 0 is never used; live workers (old and new in a reload) fit easily */

/* One worker's entry. Written only by that worker (the master sets state at spawn and clears the
 * entry after the exit); read by the master and the other workers. Plain aligned loads and stores:
 * readers tolerate a torn `activity` string (a log detail); the counters are single words. */
typedef struct {
  volatile uint64_t beat_ms;     /* CLOCK_MONOTONIC ms of the last turn of the worker's heartbeat timer */
  volatile uint64_t requests;    /* responses finished */
  volatile uint64_t connections; /* open connections, WebSockets too, kept current (the accept balance reads it) */
  volatile uint64_t websockets;  /* how many of them are WebSockets */
  volatile uint64_t yields;      /* CPU handed on after a --sched-slice of work without a pause */
  volatile uint32_t state;       /* MF_SB_* */
  char activity[196];            /* "GET /path" of the request the worker last ran Lua for */
} scoreboard_entry_t;

enum { MF_SB_FREE = 0, MF_SB_STARTING = 1, MF_SB_READY = 2, MF_SB_DRAINING = 3 };

typedef struct {
  volatile uint32_t hi;          /* entries 1..hi may be in use */
  char pad[60];
  scoreboard_entry_t e[MF_SB_ENTRIES];
} scoreboard_board_t;

/* Master: the shared board; returns its fd (passed to every worker) and maps it at *out, or -1. */
int scoreboard_create(scoreboard_board_t **out);
/* Master: a free entry's index (1..), marked starting; 0 when all are taken. */
int scoreboard_take(scoreboard_board_t *b);
/* Master: clears entry i after its worker is gone. */
void scoreboard_release(scoreboard_board_t *b, int i);
/* Worker: maps the board the master passed as MF_FD_SCOREBOARD (fds.h); NULL when there is none. */
scoreboard_board_t *scoreboard_attach(void);
/* Is there another ready, live worker with clearly fewer connections than `mine`? (See http.c.) */
int scoreboard_fewer_elsewhere(const scoreboard_board_t *b, int self, uint64_t mine);
/* CLOCK_MONOTONIC in ms: the same clock in every process. */
uint64_t scoreboard_now_ms(void);
/* Records what the worker is doing (truncated to fit). */
void scoreboard_activity(scoreboard_entry_t *sb, const char *a, size_t alen, const char *b, size_t blen);

#endif
