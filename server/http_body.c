/* http_body.c -- request bodies: the worker's budget, the time limits, and bodies still arriving.
 *
 * A body complete by the end of the read that completed its head goes to the handler whole, with the
 * request, as it always did (the fast path: nothing here runs). Otherwise the request is handed over at
 * the end of its head (http_conn.c, conn_process) and the body follows through http_conn_body_read,
 * either in pieces (req:read(); each dropped once read, and reading stops while HTTP_BODY_UNREAD waits
 * unread, so an upload of any size keeps the worker's memory flat) or whole once complete (req.body).
 * Until the handler asks, HTTP_BODY_UNREAD is kept; a handler that finishes its response without
 * reading has the rest dropped as it comes, up to HTTP_DISCARD_MAX, else its connection closes. The
 * parser stays on this message until the body ends, so a pipelined request behind it waits its turn. */
#include "http_internal.h"
#include "log.h"

/* Counts n more bytes of this connection's body against --max-body-memory. A body is refused (503,
 * logged at most once a second) when the bodies of other connections already hold the budget: so
 * many slow uploads cannot together hold the worker's memory, and one body alone always fits.
 * Returns 0, or -1 with the parser's error status set. */
int http_body_count(http_conn_t *c, uint64_t n) {
  http_server_t *srv = c->srv;
  uint64_t others = srv->body_bytes - c->rq->body_counted;
  if (others > 0 && srv->body_bytes + n > srv->cfg->max_body_memory) {
    uint64_t now = uv_now(srv->loop);
    if (srv->body_refused_at == 0 || now - srv->body_refused_at >= 1000) {
      srv->body_refused_at = now;
      mf_log("request body from %s refused with 503: %llu bytes of bodies are being received (--max-body-memory "
             "%llu)", http_conn_remote(c), (unsigned long long)srv->body_bytes,
             (unsigned long long)srv->cfg->max_body_memory);
    }
    c->rq->parser.err_status = 503;
    return -1;
  }
  srv->body_bytes += n;
  c->rq->body_counted += n;
  return 0;
}

/* The body is handed over, streamed, or the connection is gone: its bytes leave the budget. */
void http_body_release(http_conn_t *c) {
  c->srv->body_bytes -= c->rq->body_counted;
  c->rq->body_counted = 0;
  c->rq->body_until = 0;
}

/* Between reads of a body: --header-timeout for the next piece, and never past --body-timeout (a
 * streamed body has no overall limit: it holds no memory, and its handler sets the pace). */
void http_body_timer(http_conn_t *c) {
  uint64_t ms = c->srv->cfg->header_timeout_ms;
  if (c->rq->body_until != 0) {
    uint64_t now = uv_now(c->srv->loop);
    uint64_t left = c->rq->body_until > now ? c->rq->body_until - now : 1;
    if (left < ms || ms == 0) ms = left;
  }
  http_conn_timer(c, ms);
}

/* Tells a handler waiting in http_conn_body_read (and, at the end, hands over the trailers). */
static void body_notify(http_conn_t *c, int end) {
  http_server_t *srv = c->srv;
  size_t tlen = 0;
  const char *trailers = end ? http_parse_trailers(&c->rq->parser, &tlen) : "";
  if (!c->lua_owned || srv->cb.on_body == NULL || (!c->body_waiting && tlen == 0)) return;
  c->body_waiting = 0;
  srv->cb.on_body(srv->data, c, end, trailers, tlen);
}

/* A piece of a body that is still arriving after the request went to the handler (the parser's
 * on_body). Returns 0, or -1 to refuse the message (err_status set; 0 in HTTP_BODY_DISCARD). */
int http_body_piece(http_conn_t *c, const char *at, size_t len) {
  http_parse_t *p = &c->rq->parser;
  switch (c->body_mode) {
    case HTTP_BODY_DISCARD:
      c->rq->discarded += len;
      p->err_status = 0;
      return c->rq->discarded <= HTTP_DISCARD_MAX ? 0 : -1;
    case HTTP_BODY_STREAM: /* not counted: at most HTTP_BODY_UNREAD and one read wait */
      break;
    default:
      if (!(p->llhttp.flags & F_CONTENT_LENGTH) && http_body_count(c, len) != 0) return -1;
  }
  return http_parse_append(p, &c->rq->body, at, len, c->rq->body.len + len, c->srv->cfg->max_body, 413);
}

/* A read went into a body still arriving: stop reading while too much waits unread, and tell a
 * waiting reader. */
void http_body_fed(http_conn_t *c) {
  if (c->body_mode == HTTP_BODY_DISCARD || c->state != HTTP_CONN_HANDLING) return;
  if (c->body_mode != HTTP_BODY_WHOLE && c->rq->body.len >= HTTP_BODY_UNREAD && !c->read_paused) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->read_paused = 1;
    /* the client now waits for the handler: the handler's deadline, not the client's, runs */
    http_conn_timer(c, c->srv->cfg->request_timeout_ms);
  }
  if (c->body_mode == HTTP_BODY_STREAM && c->rq->body.len > 0) body_notify(c, 0);
}

/* The parser refused the rest of a body still arriving (over --max-body, a bad chunk, the budget) or
 * it timed out (status 408): notes why for the handler. The caller answers the client, then calls
 * http_body_tell (in that order: a handler woken first could answer in its place). */
void http_body_fail(http_conn_t *c, int status) {
  c->body_open = 0;
  if (c->body_mode == HTTP_BODY_DISCARD) return;
  c->rq->body_err = status == 413 ? UV_EMSGSIZE : status == 408 ? UV_ETIMEDOUT : UV_ECONNABORTED;
}

void http_body_tell(http_conn_t *c) {
  if (c->body_waiting) body_notify(c, 0);
}

/* The body still arriving is complete. Returns 1 when it was being dropped (the connection has moved on
 * to the next request), 0 when the handler still has the request. */
int http_body_complete(http_conn_t *c) {
  c->body_open = 0;
  if (c->body_mode == HTTP_BODY_DISCARD) {
    c->body_streamed = 0;
    c->body_mode = HTTP_BODY_UNDECIDED;
    http_parse_next(&c->rq->parser, HTTP_KEEP_BUF);
    http_conn_next(c);
    return 1;
  }
  c->body_end = 1;
  http_conn_timer(c, c->srv->cfg->request_timeout_ms); /* the handler's deadline from here */
  body_notify(c, 1);
  http_parse_next(&c->rq->parser, HTTP_KEEP_BUF);
  return 0;
}

/* The response to a request dispatched before its body was complete is finished. Returns 1 when the
 * rest of the body is being read and dropped (the connection goes on once it ends), 0 when the caller
 * goes on as usual (keep-alive or close: a body too long to drop closes the connection). */
int http_body_done(http_conn_t *c) {
  http_body_release(c);
  mf_buf_reset(&c->rq->body, HTTP_KEEP_BUF);
  c->body_waiting = c->body_end = 0;
  c->rq->body_err = 0;
  if (!c->body_open) {
    c->body_streamed = 0;
    c->body_mode = HTTP_BODY_UNDECIDED;
    return 0;
  }
  const llhttp_t *l = &c->rq->parser.llhttp;
  if (!c->keep_alive || c->upgrade || c->srv->draining ||
      ((l->flags & F_CONTENT_LENGTH) && l->content_length > HTTP_DISCARD_MAX)) {
    c->keep_alive = c->client_close = 0; /* closed after the response, lingering for what still comes */
    return 0;
  }
  c->body_mode = HTTP_BODY_DISCARD;
  c->rq->discarded = 0;
  c->state = HTTP_CONN_BODY;
  http_body_timer(c);
  http_conn_read_again(c);
  return 1;
}

/* The handler chose how to read (see http_conn_body_read). */
static void body_choose(http_conn_t *c, int whole) {
  c->body_mode = whole ? HTTP_BODY_WHOLE : HTTP_BODY_STREAM;
  if (!whole) http_body_release(c); /* from here at most HTTP_BODY_UNREAD waits */
}

/* Reading stopped while the handler had not read what waited: it asks for more, so read on. */
static void body_read_on(http_conn_t *c) {
  if (!c->read_paused || !c->body_open) return;
  http_conn_read_again(c);
  http_body_timer(c);
}

int http_conn_body_read(http_conn_t *c, uint32_t gen, int whole, const char **data, size_t *len) {
  if (c == NULL || c->closing || !c->body_streamed || c->rq == NULL || gen != c->rq->body_gen) return UV_EPIPE;
  if (c->rq->body_err != 0) return c->rq->body_err; /* (its answer went out: gen and state moved on) */
  if (c->state != HTTP_CONN_HANDLING || gen != c->gen) return UV_EPIPE;
  if (c->body_mode == HTTP_BODY_UNDECIDED) body_choose(c, whole);
  if (whole ? !c->body_end : c->rq->body.len == 0 && !c->body_end) {
    c->body_waiting = 1;
    body_read_on(c);
    return HTTP_BODY_WAIT;
  }
  if (!whole && c->rq->body.len == 0) return HTTP_BODY_END;
  *data = c->rq->body.data ? c->rq->body.data : "";
  *len = c->rq->body.len;
  return HTTP_BODY_PIECE;
}

void http_conn_body_taken(http_conn_t *c) {
  c->rq->body.len = 0;
  if (c->body_mode == HTTP_BODY_WHOLE) {
    mf_buf_reset(&c->rq->body, HTTP_KEEP_BUF);
    http_body_release(c);
  }
  body_read_on(c);
}
