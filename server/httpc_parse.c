/* httpc_parse.c -- an HTTP/1.1 response, parsed for the client: head, de-chunked body, framing.
 *
 * http_parse.c does the llhttp work in response mode (the head packed once, hostile input refused);
 * this file only decides where the body goes, so the Lua half sees at most one string per read and
 * never a byte at a time. A Content-Length body arrives as one piece per read: it is handed out where
 * it lies, in the caller's buffer, with no copy. Pieces of a chunked body are joined in `body`; so is
 * a whole body, which the Lua half then gets as one string at the end. Kept apart from the binding
 * (bind_httpc.c) so test/test_httpc_parse.c can feed it raw bytes without a Lua state. */
#include "httpc_parse.h"

#include <stdio.h>

static httpc_parse_t *httpc_of(http_parse_t *p) { return p->data; }

/* A response to HEAD, a 1xx, a 204 and a 304 have no body whatever their headers say (RFC 9112 §6.3);
 * llhttp would read a Content-Length body after a 304. */
static int httpc_on_head(http_parse_t *p) {
  httpc_parse_t *c = httpc_of(p);
  int status = http_parse_status(p);
  c->headed = 1;
  return c->no_body || status < 200 || status == 204 || status == 304 ? 1 : 0;
}

/* Moves the piece still in the caller's buffer into `body`, where the next one joins it. */
static int httpc_keep_piece(httpc_parse_t *c) {
  if (c->piece == NULL) return 0;
  int r = mf_buf_append(&c->body, c->piece, c->piece_len);
  c->piece = NULL;
  c->piece_len = 0;
  return r;
}

static int httpc_on_body(http_parse_t *p, const char *at, size_t len) {
  httpc_parse_t *c = httpc_of(p);
  if (!c->whole && c->piece == NULL && c->body.len == 0) { /* the first piece of this feed: leave it */
    c->piece = at;
    c->piece_len = len;
    return 0;
  }
  if (httpc_keep_piece(c) != 0 || mf_buf_append(&c->body, at, len) != 0) {
    p->err_status = 500;
    return -1;
  }
  return 0;
}

static const http_parse_callbacks_t httpc_callbacks = {NULL, httpc_on_head, httpc_on_body};

void httpc_parse_init(httpc_parse_t *c) {
  memset(c, 0, sizeof *c);
  http_parse_init(&c->parse, HTTP_RESPONSE, &httpc_callbacks, c, HTTPC_MAX_HEAD);
}

void httpc_parse_free(httpc_parse_t *c) {
  http_parse_free(&c->parse);
  mf_buf_free(&c->body);
}

void httpc_parse_start(httpc_parse_t *c, int no_body, uint64_t max_body, int whole) {
  mf_buf_t head = c->parse.head; /* its memory is reused, not given back, unless it grew large */
  mf_buf_reset(&head, 16 * 1024);
  http_parse_init(&c->parse, HTTP_RESPONSE, &httpc_callbacks, c, HTTPC_MAX_HEAD);
  c->parse.head = head;
  c->parse.max_body = max_body;
  mf_buf_reset(&c->body, 64 * 1024);
  c->piece = NULL;
  c->piece_len = 0;
  c->no_body = no_body != 0;
  c->whole = whole != 0;
  c->headed = 0;
}

int httpc_parse_feed(httpc_parse_t *c, const char *data, size_t len, size_t *used) {
  if (!c->whole) { /* what the last feed handed out is gone */
    c->piece = NULL;
    c->piece_len = 0;
    c->body.len = 0;
  }
  return http_parse_feed(&c->parse, data, len, used);
}

int httpc_parse_finish(httpc_parse_t *c) {
  if (!c->whole) {
    c->piece = NULL;
    c->piece_len = 0;
    c->body.len = 0;
  }
  return http_parse_finish(&c->parse);
}

const char *httpc_parse_body(const httpc_parse_t *c, size_t *len) {
  if (c->whole && !c->parse.complete) {
    *len = 0;
    return "";
  }
  if (c->piece) {
    *len = c->piece_len;
    return c->piece;
  }
  *len = c->body.len;
  return c->body.len ? c->body.data : "";
}

const char *httpc_parse_error(const httpc_parse_t *c, char *buf, size_t len) {
  const http_parse_t *p = &c->parse;
  if (p->err_status == 413)
    snprintf(buf, len, "response body larger than maxBody (%llu bytes)", (unsigned long long)p->max_body);
  else if (p->err_status == 431)
    snprintf(buf, len, "response head larger than %d bytes", HTTPC_MAX_HEAD);
  else if (p->err_status == 500)
    snprintf(buf, len, "out of memory");
  else
    snprintf(buf, len, "malformed response: %s", http_parse_error(p));
  return buf;
}
