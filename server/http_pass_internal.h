/* http_pass_internal.h -- what http_pass.c and http_pass_tunnel.c share: an upstream connection, and
 * the tunnel it becomes when the upstream switches protocols. */
#ifndef MOONFORK_HTTP_PASS_INTERNAL_H
#define MOONFORK_HTTP_PASS_INTERNAL_H

#include "http_pass.h"
#include "net_connect.h"
#include "writeq.h"

typedef struct pass_pool_s pass_pool_t;

/* One connection to an upstream: in an exchange (x), idle in its pool (x NULL), or a tunnel's. Its
 * memory goes in its handle's close callback (the handle's data is the pass_up_t). */
typedef struct pass_up_s {
  net_connect_stream_t h;
  uv_connect_t creq;
  writeq_t q;
  pass_pool_t *pool;
  http_pass_t *x;                /* the exchange using it; NULL while pooled or in a tunnel */
  struct pass_up_s *prev, *next; /* the pool's idle list, most recent first */
  uint64_t idle_at;
} pass_up_t;

/* ---- tunnels (http_pass_tunnel.c) ---------------------------------------------------------------- */

void http_pass_tunnel_init(uv_loop_t *loop);
/* The upstream answered 101 to request `gen` of c: the 101 (built from the upstream's packed headers)
 * goes to the client, the client's connection is taken over, and from then on bytes are relayed both
 * ways until either side ends (idle_ms: both are closed after that long without a byte either way; 0:
 * never). rest: what the upstream sent after its head (copied). u is the tunnel's whatever happens (it
 * is closed on failure). NULL, or why it failed (a static string); *sent says whether the 101 had
 * gone out (then the caller cuts the client's connection). */
const char *http_pass_tunnel_start(pass_up_t *u, http_conn_t *c, uint32_t gen, const char *headers, size_t len,
                                   uint64_t idle_ms, const char *rest, size_t rest_len, int *sent);
/* Closes every tunnel, both its sides (the worker drains). */
void http_pass_tunnel_close_all(void);

#endif
