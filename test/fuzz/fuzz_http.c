/* fuzz_http.c -- libFuzzer harness for the request path's parser: server/http_parse.c and llhttp, in
 * request mode (as http_conn.c drives it) and response mode (as a client would), fed from bytes.
 *
 * The first byte of an input chooses: bit 0 the mode (0 request, 1 response), bits 1-6 the size of
 * the pieces the rest is fed in (0: all at once; else 1..63 bytes, to split every token across reads),
 * bit 7 a small --max-body (64 bytes) instead of 1 MiB. Messages are taken one after the other, as a
 * pipelining client sends them, until an error, an upgrade or the end.
 *
 * Beyond what ASan and UBSan catch, each message that completes is checked against what the parser
 * promises (see check_message): a well-formed header store, no CR/LF/NUL and no trailing whitespace
 * in values, and for requests every rule of the "hostile input" section of http_parse.c. A broken
 * promise aborts, so libFuzzer keeps the input.
 *
 * Build and run: make fuzz (tools/run-fuzz), seeds in test/fuzz/corpus/. fuzz_http_conn.c drives a
 * whole connection around this parser. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_parse.h"

typedef struct {
  uint64_t body;   /* body bytes of the current message */
  int heads;       /* on_head calls of the current message */
} fuzz_msg_t;

#define FUZZ_CHECK(cond)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf(stderr, "fuzz_http.c:%d: broken promise: %s\n", __LINE__, #cond); \
      abort();                                                                    \
    }                                                                             \
  } while (0)

static int fuzz_on_begin(http_parse_t *p) {
  fuzz_msg_t *m = p->data;
  m->body = 0;
  m->heads = 0;
  return 0;
}

static int fuzz_on_head(http_parse_t *p) {
  ((fuzz_msg_t *)p->data)->heads++;
  return 0;
}

static int fuzz_on_body(http_parse_t *p, const char *at, size_t len) {
  fuzz_msg_t *m = p->data;
  FUZZ_CHECK(m->heads == 1);
  if (len > 0) { /* readable (ASan checks) */
    volatile char first = at[0], last = at[len - 1];
    (void)first;
    (void)last;
  }
  m->body += len;
  return 0;
}

static const http_parse_callbacks_t fuzz_callbacks = {fuzz_on_begin, fuzz_on_head, fuzz_on_body};

static int has_ws_end(const char *v, size_t n) { return n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'); }

/* What every complete message must satisfy. */
static void check_message(http_parse_t *p, llhttp_type_t type) {
  fuzz_msg_t *m = p->data;
  size_t len, off = 0, nlen, vlen, url_len;
  const char *block = http_parse_headers(p, &len), *name, *value;
  const char *url = http_parse_url(p, &url_len);
  uint32_t n = 0, hosts = 0;
  int r;
  FUZZ_CHECK(m->heads == 1);
  FUZZ_CHECK(m->body <= p->max_body);
  while ((r = http_headers_next(block, len, &off, &name, &nlen, &value, &vlen)) == 1) {
    n++;
    FUZZ_CHECK(nlen > 0);
    FUZZ_CHECK(!has_ws_end(value, vlen));
    FUZZ_CHECK(memchr(value, '\r', vlen) == NULL && memchr(value, '\n', vlen) == NULL);
    FUZZ_CHECK(memchr(value, '\0', vlen) == NULL);
    if (type == HTTP_REQUEST && nlen == 4 && strncasecmp(name, "host", 4) == 0) {
      hosts++;
      FUZZ_CHECK(memchr(value, ',', vlen) == NULL && memchr(value, '@', vlen) == NULL);
      FUZZ_CHECK(memchr(value, '/', vlen) == NULL && memchr(value, ' ', vlen) == NULL);
    }
  }
  FUZZ_CHECK(r == 0 && off == len);
  size_t tlen, toff = 0;
  const char *trailers = http_parse_trailers(p, &tlen); /* kept apart: they may name anything */
  while ((r = http_headers_next(trailers, tlen, &toff, &name, &nlen, &value, &vlen)) == 1) {
    n++;
    FUZZ_CHECK(nlen > 0 && !has_ws_end(value, vlen));
  }
  FUZZ_CHECK(r == 0 && toff == tlen);
  FUZZ_CHECK(n == p->nheaders); /* headers and trailers */
  if (type != HTTP_REQUEST) return;
  const llhttp_t *l = &p->llhttp;
  FUZZ_CHECK(l->http_major == 1 && l->http_minor <= 1);
  FUZZ_CHECK(l->method != HTTP_CONNECT);
  FUZZ_CHECK(hosts <= 1 && (hosts == 1 || l->http_minor == 0));
  FUZZ_CHECK(!(url_len == 1 && url[0] == '*') || l->method == HTTP_OPTIONS);
  if (p->te_seen) FUZZ_CHECK(p->te_chunked && !p->te_other && !p->te_bad);
  if (p->te_seen && l->http_minor == 0) FUZZ_CHECK(!p->keep_alive);
}

/* The statuses a refusal may carry (0: llhttp's own, answered 400). */
static void check_refusal(const http_parse_t *p) {
  switch (p->err_status) {
    case 0: case 400: case 405: case 413: case 431: case 501: case 505: break;
    default: FUZZ_CHECK(!"unexpected err_status");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t ctl = data[0];
  const char *in = (const char *)data + 1;
  size_t left = size - 1, step = (ctl >> 1) & 63;
  llhttp_type_t type = (ctl & 1) ? HTTP_RESPONSE : HTTP_REQUEST;
  http_parse_t p;
  fuzz_msg_t m = {0, 0};
  http_parse_init(&p, type, &fuzz_callbacks, &m, 1024);
  p.max_body = (ctl & 128) ? 64 : 1024 * 1024;
  int r = HTTP_PARSE_MORE;
  while (left > 0) {
    size_t piece = step && left > step ? step : left, used;
    r = http_parse_feed(&p, in, piece, &used);
    FUZZ_CHECK(used <= piece);
    in += used;
    left -= used;
    if (r == HTTP_PARSE_ERROR) {
      check_refusal(&p);
      (void)http_parse_error(&p);
      break;
    }
    if (r == HTTP_PARSE_DONE || r == HTTP_PARSE_UPGRADE) {
      check_message(&p, type);
      if (r == HTTP_PARSE_UPGRADE) break;
      http_parse_next(&p, 256);
    }
  }
  if (r == HTTP_PARSE_MORE && type == HTTP_RESPONSE && http_parse_finish(&p) == HTTP_PARSE_DONE)
    check_message(&p, type);
  http_parse_free(&p);
  return 0;
}
