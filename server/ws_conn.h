/* ws_conn.h -- WebSocket connections in a worker (RFC 6455 §5-7): frames in, messages out.
 *
 * A connection comes from an HTTP request that was upgraded: ws_conn_new before the 101 goes out,
 * ws_conn_open with the socket http_conn_takeover hands over. It reassembles fragmented messages
 * (control frames may come between the fragments), answers pings, runs the close handshake, checks
 * UTF-8 and sizes, inflates permessage-deflate, and enforces the idle timeout and sends pings from one
 * timer per worker. Reads go into one buffer per worker: an idle connection holds no buffer, only an
 * unfinished frame's bytes are kept. Writes go through mf_writeq (high water, drain below half). */
#ifndef MOONFORK_WS_CONN_H
#define MOONFORK_WS_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ws_deflate.h"

typedef struct ws_conn_s ws_conn_t;

typedef struct {
  /* A whole message (binary: 0 text, 1 binary); p valid during the call. */
  void (*on_message)(void *data, ws_conn_t *c, const char *p, size_t n, int binary);
  /* Once, whoever closed: the peer's code (1005: none, 1006: the TCP connection died) or the one we
   * failed the connection with. The connection may not be used after it. */
  void (*on_close)(void *data, ws_conn_t *c, unsigned code, const char *reason, size_t n);
  /* A send that returned 0 (over the high-water mark) may write again: the queue is below half. */
  void (*on_drain)(void *data, ws_conn_t *c);
} ws_callbacks_t;

typedef struct {
  uint64_t max_payload;           /* largest message, after reassembly and inflate (over 4 GiB: 4 GiB) */
  uint32_t idle_ms;               /* no frame from the client this long: close 1001 (0: never) */
  uint32_t ping_ms;               /* nothing from the client this long: send a ping (0: never) */
  const ws_deflate_params_t *deflate; /* permessage-deflate negotiated, or NULL */
} ws_options_t;

#define WS_HIGH_WATER (256 * 1024)     /* send queue above which ws_conn_send says "slow down" */
#define WS_HARD_LIMIT (64u * 1024 * 1024) /* a send queue this big: the client does not read, close */

/* Sets up the worker's WebSocket side (once). */
void ws_init(uv_loop_t *loop, const ws_callbacks_t *cb, void *data);
/* A connection waiting for its socket (ws_conn_open). NULL when out of memory. */
ws_conn_t *ws_conn_new(const ws_options_t *o);
/* The socket (the callee's from here on) and the bytes the client sent after the request; fd < 0: the
 * connection died before the hand-over (on_close with 1006 follows). */
void ws_conn_open(ws_conn_t *c, int fd, const char *rest, size_t n);
/* Sends one message (WS_OP_TEXT, WS_OP_BINARY) or a ping/pong. Returns 1, 0 when the queue is over
 * its high-water mark (on_drain follows), or UV_EPIPE when the connection is closing or closed. */
int ws_conn_send(ws_conn_t *c, int opcode, const char *p, size_t n);
/* Sends a frame made elsewhere (a broadcast's, ws_chan.c): head[0..hlen) then p[0..n). 1, 0 or UV_EPIPE
 * as ws_conn_send. */
int ws_conn_send_frame(ws_conn_t *c, const uint8_t *head, size_t hlen, const char *p, size_t n);
/* Bytes queued for the socket, not yet taken by the kernel. */
size_t ws_conn_queued(ws_conn_t *c);
/* Its permessage-deflate state, or NULL when not negotiated. */
ws_deflate_t *ws_conn_deflate(ws_conn_t *c);
#define WS_DEFLATE_MIN 32 /* smaller messages go out uncompressed (RSV1 clear): not worth it */
/* Starts the close handshake with code (0: none) and reason (up to 123 bytes). */
void ws_conn_close(ws_conn_t *c, unsigned code, const char *reason, size_t n);
/* The connection's Lua side (bind_ws.c): the slot for its userdata while that lives (NULL: none, or
 * collected), and WS_NREFS slots for the listeners' registry refs (MF_NO_REF when none). Nothing else
 * in Lua belongs to a connection. */
#define WS_NREFS 3
void **ws_conn_ud(ws_conn_t *c);
int *ws_conn_refs(ws_conn_t *c);
/* The slot for the channels the connection is a member of (ws_chan.c's; it leaves them on close). */
void **ws_conn_subs(ws_conn_t *c);
/* Open connections (those that did not hear on_close yet and those still closing). */
size_t ws_conn_count(void);
/* The worker drains: every connection gets close 1001; on_gone runs once none is left (at once when
 * there are none). */
void ws_drain(void (*on_gone)(void));

#endif
