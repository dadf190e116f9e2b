/* ws_frame.c -- the WebSocket frame codec (RFC 6455 §5): headers in and out, unmasking, UTF-8 and
 * close payload checks. Pure: ws_conn.c owns the bytes. See ws_frame.h. */
#include "ws_frame.h"

#include <string.h>

int ws_frame_parse(const uint8_t *p, size_t n, int flags, ws_frame_t *f) {
  if (n < 2) return 0;
  uint8_t b0 = p[0], b1 = p[1];
  f->fin = (b0 >> 7) & 1;
  f->rsv1 = (b0 >> 6) & 1;
  f->opcode = b0 & 0x0f;
  f->masked = (b1 >> 7) & 1;
  if (b0 & 0x30) return -WS_CLOSE_PROTOCOL; /* RSV2, RSV3: no extension of ours defines them */
  int control = (f->opcode & 0x8) != 0;
  if (f->opcode > WS_OP_BINARY && !(control && f->opcode <= WS_OP_PONG)) return -WS_CLOSE_PROTOCOL;
  /* RSV1 marks a compressed message: only with the extension, only on data frames (the first one;
   * the caller checks continuations) */
  if (f->rsv1 && (!(flags & WS_PARSE_ALLOW_RSV1) || control)) return -WS_CLOSE_PROTOCOL;
  if ((flags & WS_PARSE_CLIENT) && !f->masked) return -WS_CLOSE_PROTOCOL;
  uint64_t len = b1 & 0x7f;
  size_t head = 2;
  if (control && (len > 125 || !f->fin)) return -WS_CLOSE_PROTOCOL;
  if (len == 126) {
    if (n < 4) return 0;
    len = (uint64_t)p[2] << 8 | p[3];
    head = 4;
  } else if (len == 127) {
    if (n < 10) return 0;
    if (p[2] & 0x80) return -WS_CLOSE_PROTOCOL; /* the most significant bit MUST be 0 */
    len = 0;
    for (int i = 2; i < 10; i++) len = len << 8 | p[i];
    head = 10;
  }
  if (f->masked) {
    if (n < head + 4) return 0;
    memcpy(f->mask, p + head, 4);
    head += 4;
  }
  f->len = len;
  f->head_len = (uint8_t)head;
  return (int)head;
}

void ws_frame_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset) {
  size_t i = 0;
  unsigned k = (unsigned)(offset & 3);
  while (i < n && k != 0) { /* up to the key's start, then a word at a time */
    p[i++] ^= mask[k];
    k = (k + 1) & 3;
  }
  uint32_t m32;
  uint64_t m64;
  memcpy(&m32, mask, 4);
  m64 = (uint64_t)m32 << 32 | m32;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    w ^= m64;
    memcpy(p + i, &w, 8);
  }
  for (k = 0; i < n; i++, k++) p[i] ^= mask[k & 3];
}

size_t ws_frame_head(uint8_t out[10], int fin, int rsv1, int opcode, uint64_t len) {
  out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0f));
  if (len < 126) {
    out[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xffff) {
    out[1] = 126;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
  }
  out[1] = 127;
  for (int i = 0; i < 8; i++) out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

/* The lead byte ch opens a sequence: how many continuation bytes follow, and the range of the first
 * (narrowed where a wider one would be overlong, a surrogate, or past U+10FFFF). 0: invalid lead. */
static int utf8_lead(uint8_t ch, ws_utf8_t *s) {
  s->lo = 0x80;
  s->hi = 0xbf;
  if (ch >= 0xc2 && ch <= 0xdf) return s->need = 1;
  if (ch >= 0xe0 && ch <= 0xef) {
    if (ch == 0xe0) s->lo = 0xa0; /* below: overlong */
    if (ch == 0xed) s->hi = 0x9f; /* above: U+D800..DFFF, surrogates */
    return s->need = 2;
  }
  if (ch >= 0xf0 && ch <= 0xf4) {
    if (ch == 0xf0) s->lo = 0x90; /* overlong */
    if (ch == 0xf4) s->hi = 0x8f; /* past U+10FFFF */
    return s->need = 3;
  }
  return 0; /* 0x80-0xc1 (a stray continuation, overlong 2-byte), 0xf5-0xff */
}

int ws_utf8_feed(ws_utf8_t *s, const uint8_t *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (s->need == 0) {
      for (uint64_t w; i + 8 <= n; i += 8) { /* ASCII runs, the common case: 8 bytes at a time */
        memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull) break;
      }
      while (i < n && p[i] < 0x80) i++;
      if (i == n) break;
      if (!utf8_lead(p[i++], s)) return -1;
      continue;
    }
    uint8_t ch = p[i++];
    if (ch < s->lo || ch > s->hi) return -1;
    s->lo = 0x80;
    s->hi = 0xbf;
    s->need--;
  }
  return 0;
}

int ws_close_code_ok(unsigned code) {
  if (code >= 3000 && code <= 4999) return 1; /* libraries' and applications' own */
  return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

int ws_close_parse(const uint8_t *p, size_t n, unsigned *code) {
  if (n == 0) {
    *code = WS_CLOSE_NO_STATUS;
    return 0;
  }
  if (n == 1) return -WS_CLOSE_PROTOCOL;
  *code = (unsigned)p[0] << 8 | p[1];
  if (!ws_close_code_ok(*code)) return -WS_CLOSE_PROTOCOL;
  ws_utf8_t u = {0, 0, 0};
  if (ws_utf8_feed(&u, p + 2, n - 2) != 0 || !ws_utf8_complete(&u)) return -WS_CLOSE_BAD_DATA;
  return 0;
}

void ws_envelope_head(uint8_t out[WS_ENVELOPE_HEAD], int opcode, size_t nlen) {
  out[0] = 0xff;
  out[1] = 'W';
  out[2] = (uint8_t)opcode;
  out[3] = (uint8_t)(nlen >> 8);
  out[4] = (uint8_t)nlen;
}

int ws_envelope_parse(const char *p, size_t n, ws_envelope_t *e) {
  const uint8_t *u = (const uint8_t *)p;
  if (n < WS_ENVELOPE_HEAD || u[0] != 0xff || u[1] != 'W' || (u[2] != WS_OP_TEXT && u[2] != WS_OP_BINARY)) return -1;
  e->opcode = u[2];
  e->nlen = (size_t)u[3] << 8 | u[4];
  if (e->nlen == 0 || e->nlen > WS_CHANNEL_MAX || n - WS_ENVELOPE_HEAD < e->nlen) return -1;
  e->name = p + WS_ENVELOPE_HEAD;
  e->data = e->name + e->nlen;
  e->dlen = n - WS_ENVELOPE_HEAD - e->nlen;
  return 0;
}
