/* ws_deflate.c -- permessage-deflate (RFC 7692) with zlib: negotiation, per-message deflate and a
 * bounded inflate. The bound matters: a few kilobytes of deflate can expand to gigabytes, so the
 * output is produced in pieces and the message fails with 1009 as soon as it passes maxPayload.
 *
 * zlib is loaded with dlopen when a connection first negotiates compression, as libpq and libssl are:
 * linked, it would be mapped into every worker at start (84 KB of RSS) for scripts that never ask. */
#include "ws_deflate.h"

#include <ctype.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "log.h"
#include "ws_frame.h"

/* The zlib functions we call, resolved from libz.so.1 (zlib1g, part of every Debian). */
static struct {
  int (*inflateInit2_)(z_streamp, int, const char *, int);
  int (*inflate)(z_streamp, int);
  int (*inflateReset)(z_streamp);
  int (*inflateEnd)(z_streamp);
  int (*deflateInit2_)(z_streamp, int, int, int, int, int, const char *, int);
  int (*deflate)(z_streamp, int);
  int (*deflateReset)(z_streamp);
  int (*deflateEnd)(z_streamp);
  int loaded; /* 0: not tried, 1: loaded, -1: failed (logged once) */
} zlib;

int ws_deflate_available(void) {
  if (zlib.loaded != 0) return zlib.loaded > 0;
  zlib.loaded = -1;
  void *lib = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    mf_log("websocket: permessage-deflate unavailable: %s", dlerror());
    return 0;
  }
  const char *missing = NULL;
#define ZLIB_RESOLVE(name) \
  if ((*(void **)&zlib.name = dlsym(lib, #name)) == NULL && missing == NULL) missing = #name;
  ZLIB_RESOLVE(inflateInit2_) ZLIB_RESOLVE(inflate) ZLIB_RESOLVE(inflateReset) ZLIB_RESOLVE(inflateEnd)
  ZLIB_RESOLVE(deflateInit2_) ZLIB_RESOLVE(deflate) ZLIB_RESOLVE(deflateReset) ZLIB_RESOLVE(deflateEnd)
#undef ZLIB_RESOLVE
  if (missing) {
    mf_log("websocket: permessage-deflate unavailable: libz.so.1 has no %s", missing);
    dlclose(lib);
    return 0;
  }
  zlib.loaded = 1;
  return 1;
}

struct ws_deflate_s {
  z_stream *in;  /* made on the first compressed message received */
  z_stream *out; /* made on the first message sent compressed */
  ws_deflate_params_t p;
};

/* ---- negotiation ---------------------------------------------------------------------------- */

/* Trims blanks around s[0..*n). */
static const char *trim(const char *s, size_t *n) {
  while (*n && (*s == ' ' || *s == '\t')) s++, (*n)--;
  while (*n && (s[*n - 1] == ' ' || s[*n - 1] == '\t')) (*n)--;
  return s;
}

/* A window size value ("15" or "\"15\""): 8..15, or -1. An empty value: 0. */
static int window_bits(const char *v, size_t n) {
  if (n >= 2 && v[0] == '"' && v[n - 1] == '"') v++, n -= 2;
  if (n == 0) return 0;
  if (n > 2) return -1;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isdigit((unsigned char)v[i])) return -1;
    bits = bits * 10 + (v[i] - '0');
  }
  return bits >= 8 && bits <= 15 ? bits : -1;
}

/* One offer: "permessage-deflate; param[=value]; ..." (s[0..n), no commas). 1 when acceptable. */
static int offer_ok(const char *s, size_t n, ws_deflate_params_t *p, int *client_no_ctx) {
  unsigned seen = 0;
  size_t i = 0;
  memset(p, 0, sizeof *p);
  p->server_max_window_bits = 15;
  *client_no_ctx = 0;
  for (int first = 1; i <= n; first = 0) {
    size_t end = i;
    while (end < n && s[end] != ';') end++;
    size_t len = end - i;
    const char *item = trim(s + i, &len);
    i = end + 1;
    if (first) {
      if (len != 18 || strncasecmp(item, "permessage-deflate", 18) != 0) return 0;
      continue;
    }
    const char *eq = memchr(item, '=', len);
    size_t nlen = eq ? (size_t)(eq - item) : len, vlen = eq ? len - nlen - 1 : 0;
    const char *name = trim(item, &nlen), *val = eq ? trim(eq + 1, &vlen) : "";
    static const char *const names[] = {"server_no_context_takeover", "client_no_context_takeover",
                                        "server_max_window_bits", "client_max_window_bits"};
    int k = 0;
    while (k < 4 && !(strlen(names[k]) == nlen && strncasecmp(name, names[k], nlen) == 0)) k++;
    if (k == 4 || (seen & (1u << k))) return 0; /* unknown or repeated */
    seen |= 1u << k;
    int bits = window_bits(val, vlen);
    if (k < 2 && eq) return 0;                        /* these take no value */
    if (k == 2 && (bits <= 0 || bits == 8)) return 0; /* required; zlib's raw deflate has no 8 */
    if (k == 3 && bits < 0) return 0;                 /* optional */
    if (k == 0) p->server_no_context_takeover = 1;
    if (k == 1) *client_no_ctx = 1;
    if (k == 2) p->server_max_window_bits = (uint8_t)bits;
  }
  p->client_no_context_takeover = (uint8_t)*client_no_ctx;
  return 1;
}

int ws_deflate_negotiate(const char *offer, size_t n, ws_deflate_params_t *p, char *out, size_t outlen) {
  size_t i = 0;
  if (!ws_deflate_available()) return 0;
  while (i < n) {
    size_t end = i;
    int quoted = 0;
    while (end < n && (quoted || offer[end] != ',')) quoted ^= offer[end++] == '"';
    int client_no_ctx;
    if (offer_ok(offer + i, end - i, p, &client_no_ctx)) {
      int w = snprintf(out, outlen, "permessage-deflate%s%s", p->server_no_context_takeover ? "; server_no_context_takeover" : "",
                       client_no_ctx ? "; client_no_context_takeover" : "");
      if (p->server_max_window_bits < 15 && w > 0 && (size_t)w < outlen)
        snprintf(out + w, outlen - (size_t)w, "; server_max_window_bits=%d", p->server_max_window_bits);
      return 1;
    }
    i = end + 1;
  }
  return 0;
}

/* ---- the streams ---------------------------------------------------------------------------- */

ws_deflate_t *ws_deflate_new(const ws_deflate_params_t *p) {
  if (!ws_deflate_available()) return NULL;
  ws_deflate_t *z = calloc(1, sizeof *z);
  if (z) z->p = *p;
  return z;
}

void ws_deflate_free(ws_deflate_t *z) {
  if (z == NULL) return;
  if (z->in) zlib.inflateEnd(z->in);
  if (z->out) zlib.deflateEnd(z->out);
  free(z->in);
  free(z->out);
  free(z);
}

/* Runs inflate over in[0..n) onto out, held to max bytes. */
static int inflate_some(z_stream *s, const uint8_t *in, size_t n, mf_buf_t *out, size_t max) {
  s->next_in = (Bytef *)in;
  s->avail_in = (uInt)n;
  for (;;) {
    size_t room = 16384;
    if (out->len + room > max + 1) room = max + 1 - out->len; /* one byte past max tells "too big" */
    if (mf_buf_reserve(out, room) != 0) return -WS_CLOSE_INTERNAL;
    s->next_out = (Bytef *)out->data + out->len;
    s->avail_out = (uInt)room;
    int r = zlib.inflate(s, Z_SYNC_FLUSH);
    out->len += room - s->avail_out;
    if (out->len > max) return -WS_CLOSE_TOO_BIG;
    if (r == Z_STREAM_END) zlib.inflateReset(s); /* a final block: the next one starts a new stream */
    else if (r != Z_OK && r != Z_BUF_ERROR) return r == Z_MEM_ERROR ? -WS_CLOSE_INTERNAL : -WS_CLOSE_BAD_DATA;
    if (s->avail_out > 0 && (s->avail_in == 0 || r == Z_BUF_ERROR)) break; /* all out, or stuck */
  }
  return 0;
}

int ws_inflate(ws_deflate_t *z, const uint8_t *in, size_t n, int fin, mf_buf_t *out, size_t max) {
  if (z->in == NULL) {
    z->in = calloc(1, sizeof *z->in);
    if (z->in == NULL || zlib.inflateInit2_(z->in, -15, ZLIB_VERSION, (int)sizeof(z_stream)) != Z_OK) {
      free(z->in);
      z->in = NULL;
      return -WS_CLOSE_INTERNAL;
    }
  }
  static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
  int r = inflate_some(z->in, in, n, out, max);
  if (r == 0 && fin) r = inflate_some(z->in, tail, 4, out, max);
  if (fin || r != 0) {
    if (z->p.client_no_context_takeover || r != 0) zlib.inflateReset(z->in);
  }
  return r;
}

int ws_deflate_message(ws_deflate_t *z, const uint8_t *in, size_t n, mf_buf_t *out) {
  if (z->out == NULL) {
    z->out = calloc(1, sizeof *z->out);
    if (z->out == NULL || zlib.deflateInit2_(z->out, 1, Z_DEFLATED, -z->p.server_max_window_bits, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, (int)sizeof(z_stream)) != Z_OK) {
      free(z->out);
      z->out = NULL;
      return -1;
    }
  }
  z_stream *s = z->out;
  out->len = 0;
  s->next_in = (Bytef *)in;
  s->avail_in = (uInt)n;
  do {
    size_t room = n / 2 + 64;
    if (mf_buf_reserve(out, room) != 0) return -1;
    s->next_out = (Bytef *)out->data + out->len;
    s->avail_out = (uInt)room;
    zlib.deflate(s, Z_SYNC_FLUSH);
    out->len += room - s->avail_out;
  } while (s->avail_out == 0);
  if (out->len >= 4) out->len -= 4; /* the empty stored block Z_SYNC_FLUSH ends with: 00 00 ff ff */
  if (z->p.server_no_context_takeover) zlib.deflateReset(s);
  return 0;
}

int ws_deflate_shared_key(const ws_deflate_t *z) {
  return z->p.server_no_context_takeover ? z->p.server_max_window_bits : 0;
}
