/* http_respond.c -- response framing: the head builder, chunked bodies, our own error answers.
 *
 * Which response header wins is decided here, in C, and nowhere else (not in moonfork.http):
 * http_respond_header_role says which of the handler's headers the core owns (bind_http.c drops
 * Transfer-Encoding and Connection and reports Content-Length by it), the handler's lines come first,
 * then this file adds the framing: Content-Length when the whole body is known, chunked for a stream
 * on HTTP/1.1, "Connection: close" when the body ends with the connection (HTTP/1.0) or anyone asked
 * to close. Heads are written for every response, so they are assembled without printf into one
 * buffer per worker. */
#include <string.h>
#include <strings.h>

#include "http_internal.h"
#include "log.h"
#include "scoreboard.h"

static const char *date_header(http_server_t *srv, size_t *len) {
  time_t now = time(NULL);
  if (now != srv->date_at) {
    char d[32];
    mf_http_date(now, d);
    srv->date_len = (size_t)snprintf(srv->date, sizeof srv->date, "Date: %s\r\n", d);
    srv->date_at = now;
  }
  *len = srv->date_len;
  return srv->date;
}

static void append_uint(mf_buf_t *b, uint64_t v) {
  char d[24];
  int k = (int)sizeof d;
  do d[--k] = (char)('0' + v % 10); while ((v /= 10) > 0);
  mf_buf_append(b, d + k, sizeof d - (size_t)k);
}

static void append_status_line(mf_buf_t *b, int status) {
  const char *reason = mf_http_reason(status);
  char line[64] = "HTTP/1.1 ";
  line[9] = (char)('0' + status / 100 % 10);
  line[10] = (char)('0' + status / 10 % 10);
  line[11] = (char)('0' + status % 10);
  line[12] = ' ';
  mf_buf_append(b, line, 13);
  mf_buf_append(b, reason, strlen(reason));
  mf_buf_append(b, "\r\n", 2);
}

int http_respond_header_role(const char *name, size_t len) {
  switch (len) { /* the length first: most headers are none of these */
    case 17:
      return strncasecmp(name, "transfer-encoding", 17) == 0 ? HTTP_HEADER_FRAMING : HTTP_HEADER_OWN;
    case 10:
      return strncasecmp(name, "connection", 10) == 0 ? HTTP_HEADER_CONNECTION : HTTP_HEADER_OWN;
    case 14:
      return strncasecmp(name, "content-length", 14) == 0 ? HTTP_HEADER_LENGTH : HTTP_HEADER_OWN;
    default:
      return HTTP_HEADER_OWN;
  }
}

unsigned http_respond_head(mf_buf_t *out, const http_head_t *h) {
  int no_body_status = h->status < 200 || h->status == 204 || h->status == 304;
  int keep_alive = h->keep_alive;
  unsigned flags = 0;
  append_status_line(out, h->status);
  mf_buf_append(out, h->date, h->date_len);
  mf_buf_append(out, h->lines, h->lines_len);
  if (h->clen >= 0 || no_body_status) {
    /* the handler's own Content-Length is among its lines */
  } else if (h->final) {
    mf_buf_append(out, "Content-Length: ", 16);
    append_uint(out, h->body_len);
    mf_buf_append(out, "\r\n", 2);
  } else if (h->http11) {
    mf_buf_append(out, "Transfer-Encoding: chunked\r\n", 28);
    flags |= HTTP_HEAD_CHUNKED;
  } else {
    keep_alive = 0; /* an HTTP/1.0 body of unknown length ends when the connection does */
  }
  if (!keep_alive)
    mf_buf_append(out, "Connection: close\r\n", 19);
  else if (!h->http11)
    mf_buf_append(out, "Connection: keep-alive\r\n", 24);
  mf_buf_append(out, "\r\n", 2);
  return flags | (keep_alive ? HTTP_HEAD_KEEP_ALIVE : 0);
}

/* The chunk-size line, without printf: it is written once per chunk. */
void http_respond_chunk_size(mf_buf_t *out, size_t len) {
  char hex[20];
  int k = (int)sizeof hex;
  hex[--k] = '\n';
  hex[--k] = '\r';
  for (size_t v = len; v > 0; v >>= 4) hex[--k] = "0123456789abcdef"[v & 15];
  mf_buf_append(out, hex + k, sizeof hex - (size_t)k);
}

/* Answers with an error status of our own and ends the connection. */
void http_conn_fail(http_conn_t *c, int status) {
  if (c->closing || c->state == HTTP_CONN_CLOSING || c->state == HTTP_CONN_TAKEN) return;
  if (c->head_sent) { /* the handler's response is half out: nothing sane can follow it */
    http_conn_close(c);
    return;
  }
  http_server_t *srv = c->srv;
  const char *reason = mf_http_reason(status);
  size_t dlen;
  const char *date = date_header(srv, &dlen);
  srv->out.len = 0;
  mf_buf_appendf(&srv->out, "HTTP/1.1 %d %s\r\n", status, reason);
  mf_buf_append(&srv->out, date, dlen);
  mf_buf_appendf(&srv->out,
                 "Content-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                 strlen(reason) + 1, reason);
  uv_buf_t b = uv_buf_init(srv->out.data, (unsigned)srv->out.len);
  c->gen++; /* the handler, if any, no longer owns this connection */
  c->head_sent = 1;
  c->status = status;
  c->bytes_out = strlen(reason) + 1;
  http_server_count_response(srv);
  if (srv->access_fd >= 0 && http_conn_rq(c) != NULL && c->rq->alog.len == 0)
    mf_buf_append(&c->rq->alog, "-\0-\0-", 6); /* not a request we could read */
  http_alog_response(c);
  if (http_conn_write(c, &b, 1) >= 0) http_conn_end(c);
}

/* The head of the handler's response, into srv->out; sets the connection's framing. */
static void respond_head(http_conn_t *c, int status, const char *head, size_t head_len, size_t body_len,
                         int final, int64_t clen, int flags) {
  http_server_t *srv = c->srv;
  http_head_t h = {.status = status, .http11 = c->http11, .final = final, .clen = clen, .body_len = body_len,
                   .lines = head, .lines_len = head_len};
  h.keep_alive = c->keep_alive && !srv->draining && !(flags & HTTP_RESP_CLOSE);
  h.date = date_header(srv, &h.date_len);
  unsigned framing = http_respond_head(&srv->out, &h);
  c->chunked = (framing & HTTP_HEAD_CHUNKED) != 0;
  c->keep_alive = (framing & HTTP_HEAD_KEEP_ALIVE) != 0;
  c->head_sent = 1;
  c->status = status;
  c->bytes_out = 0;
  /* a bodiless response (HEAD, 1xx, 204, 304) may state the length of a body it does not carry */
  c->clen_left = c->is_head || status < 200 || status == 204 || status == 304 ? -1 : clen;
  c->clen_over = 0;
  http_conn_timer(c, 0); /* the request timeout covers only the wait for a response to start */
}

/* The part of this call's body that the handler's Content-Length allows. More is never sent (on a
 * kept-alive connection it would read as a second response); a body that ends short leaves the client
 * waiting for the rest, so the connection then closes after it. Both are logged. */
static size_t respond_clen(http_conn_t *c, size_t body_len, int final) {
  if ((uint64_t)c->clen_left < body_len) {
    if (!c->clen_over)
      mf_log("response to %s: the body is longer than its Content-Length (%lld): the rest is not sent",
             http_conn_remote(c), (long long)(c->bytes_out + (uint64_t)c->clen_left));
    c->clen_over = 1;
    body_len = (size_t)c->clen_left;
  }
  c->clen_left -= (int64_t)body_len;
  if (final && c->clen_left > 0) {
    mf_log("response to %s: the body ended %lld bytes short of its Content-Length (%lld): closing the "
           "connection", http_conn_remote(c), (long long)c->clen_left,
           (long long)(c->bytes_out + body_len + (uint64_t)c->clen_left));
    c->keep_alive = 0;
  }
  return body_len;
}

/* The pieces of this call: head (if any) and body, chunk-framed when the body is chunked. */
static unsigned respond_pieces(http_conn_t *c, uv_buf_t *bufs, const char *body, size_t body_len, int final,
                               int send_body) {
  mf_buf_t *out = &c->srv->out;
  unsigned n = 0;
  if (send_body && c->chunked) {
    if (body_len > 0) http_respond_chunk_size(out, body_len);
    if (out->len > 0) bufs[n++] = uv_buf_init(out->data, (unsigned)out->len);
    if (body_len > 0) bufs[n++] = uv_buf_init((char *)body, (unsigned)body_len);
    if (body_len > 0 && final)
      bufs[n++] = uv_buf_init("\r\n0\r\n\r\n", 7);
    else if (body_len > 0)
      bufs[n++] = uv_buf_init("\r\n", 2);
    else if (final)
      bufs[n++] = uv_buf_init("0\r\n\r\n", 5);
  } else {
    if (out->len > 0) bufs[n++] = uv_buf_init(out->data, (unsigned)out->len);
    if (send_body && body_len > 0) bufs[n++] = uv_buf_init((char *)body, (unsigned)body_len);
  }
  return n;
}

int http_conn_respond(http_conn_t *c, uint32_t gen, int status, const char *head, size_t head_len,
                      const char *body, size_t body_len, int final, int64_t clen, int flags) {
  if (c == NULL || c->closing || c->state != HTTP_CONN_HANDLING || gen != c->gen) return UV_EPIPE;
  /* HEAD, 1xx, 204 and 304 responses carry no body, whatever the handler writes. */
  int send_body = !c->is_head && !(status < 200 || status == 204 || status == 304);
  uv_buf_t bufs[3];
  c->srv->out.len = 0;
  if (!c->head_sent) respond_head(c, status, head, head_len, body_len, final, clen, flags);
  if (send_body && c->clen_left >= 0) body_len = respond_clen(c, body_len, final);
  if (send_body) c->bytes_out += body_len;
  /* Nagle only delays a write that follows an unacknowledged one: a whole response on a connection
   * that then closes never does. Streams and keep-alive connections get TCP_NODELAY (nginx's rule). */
  if (!c->nodelay && (!final || c->keep_alive)) {
    c->nodelay = 1;
    uv_tcp_nodelay(&c->tcp, 1);
  }
  unsigned n = respond_pieces(c, bufs, body, body_len, final, send_body);
  int r = http_conn_write(c, bufs, n);
  if (r < 0) return UV_EPIPE;
  if (final) {
    http_conn_request_done(c);
    return 1;
  }
  return r == 0; /* 1: written; 0: written, but over high water (on_drain follows) */
}

void http_conn_abort(http_conn_t *c, uint32_t gen) {
  if (c != NULL && gen == c->gen && c->state == HTTP_CONN_HANDLING) {
    if (c->head_sent)
      http_conn_close(c);
    else
      http_conn_fail(c, 500);
  }
}
