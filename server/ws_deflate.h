/* ws_deflate.h -- permessage-deflate (RFC 7692): the offer's negotiation and each message's
 * compression, with zlib. A connection that did not negotiate it has no ws_deflate_t at all, and one
 * that did gets its zlib streams only when a message first needs them: idle memory stays small. */
#ifndef MOONFORK_WS_DEFLATE_H
#define MOONFORK_WS_DEFLATE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct {
  uint8_t server_no_context_takeover; /* we reset our compressor after every message */
  uint8_t client_no_context_takeover; /* the client resets its own: we may reset our decompressor */
  uint8_t server_max_window_bits;     /* 9..15: our compressor's window */
} ws_deflate_params_t;

/* Picks the first acceptable permessage-deflate offer in a Sec-WebSocket-Extensions value
 * (RFC 7692 §5, §7.1): 1 with *p set and the response's extension value in out (NUL-ended), or 0
 * when no offer is acceptable (unknown or repeated parameters, bad window sizes, server window 8,
 * which zlib's raw deflate cannot make). */
int ws_deflate_negotiate(const char *offer, size_t n, ws_deflate_params_t *p, char *out, size_t outlen);

/* Loads zlib (dlopen, once): 1 when it is there, else 0 (logged once; nothing is negotiated). */
int ws_deflate_available(void);

typedef struct ws_deflate_s ws_deflate_t;

/* A connection's compression state (no zlib stream yet). NULL when out of memory or without zlib. */
ws_deflate_t *ws_deflate_new(const ws_deflate_params_t *p);
void ws_deflate_free(ws_deflate_t *z);
/* Inflates one frame's payload of a compressed message onto out; fin: the message's last frame.
 * Never lets out grow past max bytes. 0, or minus the close code: 1009 over max (a bomb stops
 * there), 1007 not a deflate stream, 1011 out of memory. */
int ws_inflate(ws_deflate_t *z, const uint8_t *in, size_t n, int fin, mf_buf_t *out, size_t max);
/* The window bits (9-15) of a compressor reset after every message (server_no_context_takeover): the
 * same message compresses to the same bytes for every such connection with those bits, so a broadcast
 * compresses it once for all of them. 0 when the compressor keeps its context (each needs its own). */
int ws_deflate_shared_key(const ws_deflate_t *z);
/* Compresses a whole message into out (emptied first), as one frame's payload (the final empty
 * block's 00 00 ff ff stripped). 0, or -1 when out of memory. */
int ws_deflate_message(ws_deflate_t *z, const uint8_t *in, size_t n, mf_buf_t *out);

#endif
