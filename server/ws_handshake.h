/* ws_handshake.h -- the opening handshake's arithmetic (RFC 6455 §4.2.2): SHA-1 (RFC 3174), base64,
 * Sec-WebSocket-Accept from a key, and the checks on a key. Our own small SHA-1 rather than libcrypto:
 * a worker that never upgrades should not map OpenSSL. Unit tests: test/test_ws_frame.c. */
#ifndef MOONFORK_WS_HANDSHAKE_H
#define MOONFORK_WS_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

/* The SHA-1 digest of p[0..n) into out. */
void ws_sha1(const void *p, size_t n, uint8_t out[20]);
/* base64 (RFC 4648, with padding) of p[0..n) into out (room for 4 * ceil(n / 3) + 1 bytes, NUL-ended);
 * returns the length. */
size_t ws_base64(const uint8_t *p, size_t n, char *out);
/* 1 when key is a valid Sec-WebSocket-Key: the base64 of 16 bytes (24 characters, "==" at the end). */
int ws_key_ok(const char *key, size_t n);
/* Sec-WebSocket-Accept for `key` into out (29 bytes with the NUL). */
void ws_accept_key(const char *key, size_t n, char out[29]);

#endif
