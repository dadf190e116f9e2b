/* writeq.h -- writing to a libuv stream without waiting: to the socket now, or a copy queued. */
#ifndef MOONFORK_WRITEQ_H
#define MOONFORK_WRITEQ_H

#include <stdint.h>
#include <uv.h>

/* Writes bufs to s: what the socket takes at once goes now (no copy); the rest is copied and queued,
 * and `cb` runs when that queued part is written (its uv_write_t is freed after cb returns; cb is never
 * called when everything went at once). The caller's buffers may be reused as soon as this returns.
 * Returns 0, or a negative UV_E* code (nothing queued; the stream should be closed). */
int mf_writeq(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb);
/* Frees what mf_writeq queued; call it first thing in the uv_write_cb. */
void mf_writeq_done(uv_write_t *req);

/* A stream's send queue with backpressure, embedded in its owner (an HTTP connection, a mesh peer).
 * A write that leaves more than high_water bytes queued says "slow down"; on_drain then runs once,
 * when the queue has fallen to half of it. on_error runs when a queued write fails (not when it is
 * cancelled by uv_close): the owner should close the stream. on_empty (NULL unless the owner sets it
 * after writeq_init) runs each time a queued write completes and nothing is left queued (no byte and no
 * write callback still to come: the owner may free the queue in it). All get the
 * queue; container_of finds the owner. */
typedef struct writeq_s writeq_t;
typedef void (*writeq_drain_cb)(writeq_t *q);
typedef void (*writeq_error_cb)(writeq_t *q, int status);

struct writeq_s {
  uv_stream_t *stream;
  size_t high_water;
  writeq_drain_cb on_drain;
  writeq_error_cb on_error;
  writeq_drain_cb on_empty;
  uint64_t queued;    /* bytes ever queued (what the socket did not take at once) */
  uint32_t reqs;      /* queued writes whose callback has not run yet */
  unsigned above : 1; /* a write said "slow down": on_drain is due */
};

void writeq_init(writeq_t *q, uv_stream_t *stream, size_t high_water, writeq_drain_cb on_drain,
                 writeq_error_cb on_error);
/* Writes bufs (as mf_writeq). Returns 0 when the queue is under high water, 1 when it is over it
 * (on_drain will follow), or a negative UV_E* code (nothing queued; the stream should be closed). */
int writeq_write(writeq_t *q, const uv_buf_t *bufs, unsigned n);
/* writeq_write for an owner that keeps a queue only while bytes wait in it (an HTTP connection): *qp
 * is NULL while none does. What the socket takes at once goes without one; when bytes must be queued,
 * make(owner) allocates and inits the queue, stored in *qp (NULL from it: UV_ENOMEM, the stream should
 * be closed). Returns as writeq_write. */
int writeq_write_lazy(writeq_t **qp, uv_stream_t *s, const uv_buf_t *bufs, unsigned n,
                      writeq_t *(*make)(void *owner), void *owner);
/* Bytes waiting to be written. */
static inline size_t writeq_size(const writeq_t *q) { return uv_stream_get_write_queue_size(q->stream); }
/* Bytes of what was queued that have gone out since: it grows while the peer reads, however large
 * the single queued write (libuv writes a request in pieces and calls back only at its end). */
static inline uint64_t writeq_sent(const writeq_t *q) { return q->queued - writeq_size(q); }
/* Forgets a "slow down" said before: no on_drain for it (the writer it was for is gone). */
static inline void writeq_forget_drain(writeq_t *q) { q->above = 0; }

/* Makes on_drain run once the queue is empty (a hand-over waits for everything written to go out). */
static inline void writeq_drain_when_empty(writeq_t *q) {
  q->high_water = 0;
  q->above = 1;
}

#endif
