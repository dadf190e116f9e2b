/* ws_handshake.c -- SHA-1, base64 and the Sec-WebSocket-Accept value for the opening handshake.
 * SHA-1 runs once per upgrade on under 64 bytes: written for clarity, not speed. See ws_handshake.h. */
#include "ws_handshake.h"

#include <string.h>

#define ROL(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

/* One 64-byte block into the state h (RFC 3174 §6.1, method 1). */
static void sha1_block(uint32_t h[5], const uint8_t *blk) {
  uint32_t w[80];
  for (int t = 0; t < 16; t++)
    w[t] = (uint32_t)blk[4 * t] << 24 | (uint32_t)blk[4 * t + 1] << 16 | (uint32_t)blk[4 * t + 2] << 8 | blk[4 * t + 3];
  for (int t = 16; t < 80; t++) w[t] = ROL(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
  for (int t = 0; t < 80; t++) {
    uint32_t f, k;
    if (t < 20) {
      f = (b & c) | (~b & d);
      k = 0x5A827999;
    } else if (t < 40) {
      f = b ^ c ^ d;
      k = 0x6ED9EBA1;
    } else if (t < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8F1BBCDC;
    } else {
      f = b ^ c ^ d;
      k = 0xCA62C1D6;
    }
    uint32_t tmp = ROL(a, 5) + f + e + w[t] + k;
    e = d;
    d = c;
    c = ROL(b, 30);
    b = a;
    a = tmp;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
}

void ws_sha1(const void *data, size_t n, uint8_t out[20]) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  const uint8_t *p = data;
  size_t left = n;
  for (; left >= 64; left -= 64, p += 64) sha1_block(h, p);
  uint8_t last[128];
  memset(last, 0, sizeof last);
  memcpy(last, p, left);
  last[left] = 0x80; /* the padding: a one bit, zeros, the length in bits (64-bit big-endian) */
  size_t total = left + 9 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t)n * 8;
  for (int i = 0; i < 8; i++) last[total - 1 - i] = (uint8_t)(bits >> (8 * i));
  sha1_block(h, last);
  if (total == 128) sha1_block(h, last + 64);
  for (int i = 0; i < 5; i++) {
    out[4 * i] = (uint8_t)(h[i] >> 24);
    out[4 * i + 1] = (uint8_t)(h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(h[i] >> 8);
    out[4 * i + 3] = (uint8_t)h[i];
  }
}

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t ws_base64(const uint8_t *p, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    out[o++] = b64_chars[v >> 18 & 63];
    out[o++] = b64_chars[v >> 12 & 63];
    out[o++] = i + 1 < n ? b64_chars[v >> 6 & 63] : '=';
    out[o++] = i + 2 < n ? b64_chars[v & 63] : '=';
  }
  out[o] = '\0';
  return o;
}

int ws_key_ok(const char *key, size_t n) {
  if (n != 24 || key[22] != '=' || key[23] != '=') return 0;
  for (size_t i = 0; i < 22; i++)
    if (key[i] == '\0' || !strchr(b64_chars, key[i])) return 0;
  return 1;
}

void ws_accept_key(const char *key, size_t n, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  char buf[128];
  uint8_t digest[20];
  if (n > sizeof buf - (sizeof guid - 1)) n = sizeof buf - (sizeof guid - 1);
  memcpy(buf, key, n);
  memcpy(buf + n, guid, sizeof guid - 1);
  ws_sha1(buf, n + sizeof guid - 1, digest);
  ws_base64(digest, 20, out);
}
