/* writeq.h -- writing to a libuv stream without waiting: to the socket now, or a copy queued. */
#ifndef MOONFORK_WRITEQ_H
#define MOONFORK_WRITEQ_H

#include <uv.h>

/* Writes bufs to s: what the socket takes at once goes now (no copy); the rest is copied and queued,
 * and `cb` runs when that queued part is written (its uv_write_t is freed after cb returns; cb is never
 * called when everything went at once). The caller's buffers may be reused as soon as this returns.
 * Returns 0, or a negative UV_E* code (nothing queued; the stream should be closed). */
int mf_writeq(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb);
/* Frees what mf_writeq queued; call it first thing in the uv_write_cb. */
void mf_writeq_done(uv_write_t *req);

#endif
