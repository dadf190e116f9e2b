/* scoreboard.h -- a page of memory each worker shares with the master: heartbeat, counters, activity. */
#ifndef MOONFORK_SCOREBOARD_H
#define MOONFORK_SCOREBOARD_H

#include <stddef.h>
#include <stdint.h>

#define MF_FD_SCOREBOARD 5

/* Written only by the worker, read by the master. Plain loads and stores of aligned 64-bit fields: the
 * master tolerates a torn `activity` string (it is a log detail), and the counters only grow. */
typedef struct {
  volatile uint64_t beat_ms;     /* CLOCK_MONOTONIC ms of the worker loop's last turn of its heartbeat timer */
  volatile uint64_t requests;    /* responses finished */
  volatile uint64_t connections; /* open connections */
  volatile uint32_t state;       /* MF_SB_* */
  char activity[192];            /* "GET /path" of the request the worker last ran Lua for */
} mf_scoreboard_t;

enum { MF_SB_STARTING = 0, MF_SB_READY = 1, MF_SB_DRAINING = 2 };

/* Master: a new zeroed scoreboard; returns its fd (to pass to the worker) and maps it at *out, or -1. */
int mf_scoreboard_create(mf_scoreboard_t **out);
/* Worker: maps the scoreboard the master passed as MF_FD_SCOREBOARD; NULL when there is none. */
mf_scoreboard_t *mf_scoreboard_attach(void);
void mf_scoreboard_release(mf_scoreboard_t *sb);
/* CLOCK_MONOTONIC in ms: the same clock in every process. */
uint64_t mf_monotonic_ms(void);
/* Records what the worker is doing (truncated to fit). */
void mf_scoreboard_activity(mf_scoreboard_t *sb, const char *a, size_t alen, const char *b, size_t blen);

#endif
