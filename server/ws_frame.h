/* ws_frame.h -- the WebSocket frame codec (RFC 6455 §5): pure functions, no loop, no allocation.
 *
 * ws_conn.c feeds it the bytes a client sent; it says whether a frame header is complete, and if
 * not valid, which close code the connection fails with. It also builds the server's frame heads,
 * validates UTF-8 a piece at a time (a text message may be split anywhere, even inside a
 * character) and close payloads. Unit tests: test/test_ws_frame.c. */
#ifndef MOONFORK_WS_FRAME_H
#define MOONFORK_WS_FRAME_H

#include <stddef.h>
#include <stdint.h>

enum {
  WS_OP_CONT = 0x0,
  WS_OP_TEXT = 0x1,
  WS_OP_BINARY = 0x2,
  WS_OP_CLOSE = 0x8,
  WS_OP_PING = 0x9,
  WS_OP_PONG = 0xA,
};

/* Close codes (RFC 6455 §7.4.1). */
enum {
  WS_CLOSE_NORMAL = 1000,
  WS_CLOSE_GOING_AWAY = 1001,
  WS_CLOSE_PROTOCOL = 1002,
  WS_CLOSE_NO_STATUS = 1005,   /* never sent: "the close frame had no code" */
  WS_CLOSE_ABNORMAL = 1006,    /* never sent: "the TCP connection died without a close frame" */
  WS_CLOSE_BAD_DATA = 1007,    /* text that is not UTF-8 */
  WS_CLOSE_TOO_BIG = 1009,
  WS_CLOSE_INTERNAL = 1011,
};

typedef struct {
  uint64_t len;        /* payload length */
  uint8_t mask[4];     /* the masking key (masked frames) */
  uint8_t opcode;
  uint8_t fin : 1;
  uint8_t rsv1 : 1;    /* "compressed" under permessage-deflate */
  uint8_t masked : 1;
  uint8_t head_len;    /* bytes of the header: 2 to 14 */
} ws_frame_t;

/* Flags for ws_frame_parse. */
#define WS_PARSE_ALLOW_RSV1 1 /* permessage-deflate was negotiated: RSV1 may be set (on data frames) */
#define WS_PARSE_CLIENT 2     /* frames come from a client: they must be masked */

/* Parses the frame header at p[0..n). Returns the header length (> 0, f filled) when it is complete
 * and valid, 0 when more bytes are needed, or minus a close code (-1002) when the frame breaks the
 * protocol: reserved bits, an unknown opcode, a control frame fragmented or over 125 bytes, an
 * unmasked client frame, a 64-bit length with its top bit set. Whether a continuation is expected is
 * the caller's business (it knows the message state). */
int ws_frame_parse(const uint8_t *p, size_t n, int flags, ws_frame_t *f);

/* XORs p[0..n) with the masking key, as bytes at `offset` into the payload. */
void ws_frame_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* Writes the head of an unmasked (server) frame into out (room for 10 bytes): the shortest of the
 * 7-, 16- and 64-bit length forms. Returns its length. */
size_t ws_frame_head(uint8_t out[10], int fin, int rsv1, int opcode, uint64_t len);

/* Incremental UTF-8 validation (RFC 3629: no overlong forms, no surrogates, nothing over U+10FFFF).
 * Zero it to start; a message may be fed in pieces split anywhere. */
typedef struct {
  uint8_t need; /* continuation bytes still due */
  uint8_t lo;   /* the allowed range of the next one */
  uint8_t hi;
} ws_utf8_t;

/* 0 while the bytes so far can start valid UTF-8, -1 once they cannot. */
int ws_utf8_feed(ws_utf8_t *s, const uint8_t *p, size_t n);
/* 1 when the text fed ends on a character boundary (a message may end there). */
static inline int ws_utf8_complete(const ws_utf8_t *s) { return s->need == 0; }

/* 1 when a client may send close code `code` (1000-1003, 1007-1014, 3000-4999), else 0. */
int ws_close_code_ok(unsigned code);
/* Checks a close frame's payload: 0 and *code (WS_CLOSE_NO_STATUS when empty) when valid, else minus
 * the close code to fail with (1002: one byte, or a code no one may send; 1007: a reason not UTF-8). */
int ws_close_parse(const uint8_t *p, size_t n, unsigned *code);

/* A published message on its way to the other workers (mesh) or hosts (Redis), moonfork.websocket's
 * publish: FF 'W', the opcode (1 text, 2 binary), the channel's length (16 bits, big-endian), the
 * channel, the data. Every worker parses it and sends the data to its members of the channel. */
#define WS_ENVELOPE_HEAD 5
#define WS_CHANNEL_MAX 1024 /* the longest channel name, in bytes */
typedef struct {
  const char *name, *data;
  size_t nlen, dlen;
  int opcode;
} ws_envelope_t;

/* The envelope's head for a channel nlen bytes long (1..WS_CHANNEL_MAX) into out. */
void ws_envelope_head(uint8_t out[WS_ENVELOPE_HEAD], int opcode, size_t nlen);
/* 0 with e pointing into p[0..n), or -1 when p is not an envelope (too short, wrong mark or opcode,
 * an empty or too long channel name). */
int ws_envelope_parse(const char *p, size_t n, ws_envelope_t *e);

#endif
