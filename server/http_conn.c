/* http_conn.c -- an HTTP/1.1 connection: reading, the request/response cycle, timers, pipelining.
 *
 * A connection handles one request at a time. The parser (http_parse.c) pauses at the end of each
 * message; bytes that arrive after it (pipelined requests) wait in `pending` until the response is
 * finished, so responses always leave in request order. A request whose body is still arriving at the
 * end of the read that completed its head goes to the handler then, and the parser stays on that body
 * until it has been read or dropped (http_body.c) before anything waits in `pending`. Lua never runs
 * inside an llhttp callback: the request is handed over only after the parser returned, and a response
 * finished from inside Lua resumes the parser later, from an idle handle, never re-entering the Lua
 * state that called us.
 *
 * Reads land in one buffer shared by the whole worker (libuv hands it back before the next read), so an
 * idle keep-alive connection costs only its struct: no per-connection read buffer. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http_chan.h"
#include "http_internal.h"
#include "log.h"
#include "scoreboard.h"

#define HTTP_LINGER_MS 2000 /* after our FIN, how long we drain what the client still sends */

static void conn_process(http_conn_t *c, const char *data, size_t len);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void takeover_finish(http_conn_t *c);

/* ---- memory ----------------------------------------------------------------------------------
 * A connection that waits (keep-alive between requests, or a response held open: SSE, long polls)
 * keeps only its http_conn_t: the libuv handle, the send queue and a few counters. Reads land in the
 * worker's buffer; the parser, body, held input, access-log line and shutdown request live in an
 * http_rq_t taken from the server's pool when bytes arrive and given back once nothing in it is in
 * use; timeouts are places in the worker's heap (http_server.c), not a timer per connection. */

static const http_parse_callbacks_t conn_parse_callbacks;

static size_t conn_pending(const http_conn_t *c) { return c->rq != NULL ? c->rq->pending.len : 0; }

http_rq_t *http_conn_rq(http_conn_t *c) {
  if (c->rq != NULL) return c->rq;
  http_rq_t *rq = http_server_rq_get(c->srv);
  if (rq == NULL) return NULL;
  mf_buf_t head = rq->parser.head; /* (what it grew to: kept for this request) */
  http_parse_init(&rq->parser, HTTP_REQUEST, &conn_parse_callbacks, c, (uint32_t)c->srv->cfg->max_header_size);
  rq->parser.head = head;
  rq->parser.max_body = c->srv->cfg->max_body; /* chunk extensions count too (http_parse.c) */
  rq->discarded = rq->body_until = rq->body_counted = 0;
  rq->body_err = 0;
  rq->takeover_cb = NULL;
  c->rq = rq;
  return rq;
}

/* Gives the request state back to the pool, its buffers emptied. */
static void conn_rq_put(http_conn_t *c) {
  http_rq_t *rq = c->rq;
  c->rq = NULL;
  http_parse_next(&rq->parser, HTTP_KEEP_BUF);
  mf_buf_reset(&rq->body, HTTP_KEEP_BUF);
  mf_buf_reset(&rq->pending, HTTP_KEEP_BUF);
  mf_buf_reset(&rq->alog, HTTP_KEEP_BUF);
  http_server_rq_put(c->srv, rq);
}

/* Between messages, with nothing held, no body and no hand-over under way: the state goes back. */
static void conn_rq_release(http_conn_t *c) {
  http_rq_t *rq = c->rq;
  if (rq == NULL || c->closing || c->in_process || c->body_streamed || c->body_open) return;
  if (c->state != HTTP_CONN_IDLE && c->state != HTTP_CONN_HANDLING) return;
  if (rq->pending.len > 0 || rq->alog.len > 0 || rq->body_counted > 0 || rq->takeover_cb != NULL) return;
  conn_rq_put(c);
}

/* ---- writing and ending ---------------------------------------------------------------------- */

static void on_write_error(writeq_t *q, int status) {
  (void)status;
  http_conn_close(q->stream->data);
}

/* Everything written is out: the queue goes (writeq.c touches it no more), the send timeout stops,
 * and an idle connection's keep-alive starts now. */
static void on_write_empty(writeq_t *q) {
  http_conn_t *c = q->stream->data;
  free(mf_container_of(q, http_send_t, wq));
  c->wq = NULL;
  if (c->closing) return;
  if (c->state == HTTP_CONN_IDLE && c->deadline == 0) http_conn_timer(c, c->srv->cfg->keepalive_timeout_ms);
}

static void on_write_drain(writeq_t *q) {
  http_conn_t *c = q->stream->data;
  if (c->closing) return;
  if (c->state == HTTP_CONN_TAKEN) takeover_finish(c); /* the 101 is out: hand over now */
  else if (c->state == HTTP_CONN_HANDLING && c->srv->cb.on_drain) c->srv->cb.on_drain(c->srv->data, c);
}

/* Made when a write leaves bytes queued; freed by on_write_empty or with the connection. */
static writeq_t *conn_send_make(void *arg) {
  http_conn_t *c = arg;
  http_send_t *snd = calloc(1, sizeof *snd);
  if (snd == NULL) return NULL;
  writeq_init(&snd->wq, (uv_stream_t *)&c->tcp, HTTP_HIGH_WATER, on_write_drain, on_write_error);
  snd->wq.on_empty = on_write_empty;
  return &snd->wq;
}

/* Sends bufs (see writeq.c). Returns 0, 1 when the queue is over high water, or a negative UV_E* code
 * when the connection failed (it is then closing). A write that finds HTTP_HARD_LIMIT bytes already
 * queued closes the connection (UV_ENOBUFS): its writer ignored "slow down". */
int http_conn_write(http_conn_t *c, uv_buf_t *bufs, unsigned n) {
  if (c->closing) return UV_EPIPE;
  size_t queued = http_conn_queued(c);
  if (queued > HTTP_HARD_LIMIT) {
    mf_log("response to %s: %zu bytes already queued (over %u MiB; the handler ignored write()'s false): "
           "closing the connection", http_conn_remote(c), queued, HTTP_HARD_LIMIT >> 20);
    http_conn_close(c);
    return UV_ENOBUFS;
  }
  int r = writeq_write_lazy(&c->wq, (uv_stream_t *)&c->tcp, bufs, n, conn_send_make, c);
  if (r < 0) http_conn_close(c);
  else if (http_conn_send_check(c) == 0 && http_conn_queued(c) > 0) http_conn_send_watch(c); /* bytes wait */
  return r;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  http_conn_t *c = req->handle->data;
  if (status < 0 || c->closing) {
    http_conn_close(c);
    return;
  }
  /* Keep reading (and dropping) what the client still sends: closing with unread input makes the
   * kernel send RST, which can destroy our last response before the client reads it. */
  http_conn_timer(c, HTTP_LINGER_MS);
}

void http_conn_read_again(http_conn_t *c) {
  if (!c->read_paused) return;
  c->read_paused = 0;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* The response that ends this connection is written: send FIN once it is flushed, then linger. */
void http_conn_end(http_conn_t *c) {
  if (c->closing || c->state == HTTP_CONN_CLOSING || c->state == HTTP_CONN_TAKEN) return;
  http_rq_t *rq = http_conn_rq(c); /* (its shutdown request) */
  if (rq == NULL) {
    http_conn_close(c);
    return;
  }
  c->state = HTTP_CONN_CLOSING;
  rq->pending.len = 0;
  /* With bytes still queued the send timeout watches them; the linger starts in on_shutdown, once
   * they are out (a slow reader of a large response is not cut off). */
  http_conn_timer(c, http_conn_queued(c) == 0 ? HTTP_LINGER_MS : 0);
  http_conn_read_again(c); /* so the linger sees the client's FIN */
  if (uv_shutdown(&rq->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) http_conn_close(c);
}

/* ---- the request/response cycle ------------------------------------------------------------- */

static void on_idle(uv_idle_t *idle);

static void conn_queue_resume(http_conn_t *c) {
  if (c->queued || c->closing) return;
  c->queued = 1;
  c->resume_next = c->srv->resume_head;
  c->srv->resume_head = c;
  uv_idle_start(&c->srv->idle, on_idle);
}

/* The response is finished: get ready for the next request on this connection, or end it. */
void http_conn_request_done(http_conn_t *c) {
  http_server_t *srv = c->srv;
  c->lua_owned = 0;
  if (c->in_chan) http_chan_leave_all(c); /* the response is over: it leaves its channels */
  /* Lua keeps nothing for a connection between requests: its binding object (and through it the
   * finished response) goes now; the next request makes a new one. */
  if (c->user_ref != MF_NO_REF && srv->cb.on_conn_closed) srv->cb.on_conn_closed(srv->data, c, 0);
  http_server_count_response(srv);
  http_alog_response(c);
  if (c->body_streamed && http_body_done(c)) return; /* reading on to drop the rest of its body */
  if (!c->keep_alive || c->upgrade) {
    /* A client that asked to close sends nothing more: with nothing unread and nothing queued, no RST
     * can hurt the response, so close now instead of lingering for its FIN. */
    if (c->client_close && !c->upgrade && conn_pending(c) == 0 && http_conn_queued(c) == 0)
      http_conn_close(c);
    else
      http_conn_end(c);
    return;
  }
  if (srv->draining) { /* its head promised keep-alive before the drain began */
    http_conn_end(c);
    return;
  }
  http_conn_next(c);
  if (!c->in_process) conn_rq_release(c);
}

void http_conn_next(http_conn_t *c) {
  c->state = HTTP_CONN_IDLE;
  c->head_sent = 0;
  /* keep-alive counts from when the response is out, not queued: else on_write_empty starts it */
  http_conn_timer(c, http_conn_queued(c) == 0 ? c->srv->cfg->keepalive_timeout_ms : 0);
  if (!c->in_process && (conn_pending(c) > 0 || c->read_paused)) conn_queue_resume(c);
}

/* Hands the request to the handler: complete, or (body_open) at the end of its head, with its body to
 * follow (http_body.c). The headers go as the parser stored them (packed). */
static void conn_dispatch(http_conn_t *c) {
  http_server_t *srv = c->srv;
  http_rq_t *rq = c->rq;
  http_parse_t *p = &rq->parser;
  http_request_t req;
  req.method = http_parse_method(p);
  req.url = http_parse_url(p, &req.url_len);
  req.http_major = p->llhttp.http_major;
  req.http_minor = p->llhttp.http_minor;
  req.headers = http_parse_headers(p, &req.headers_len);
  req.trailers = http_parse_trailers(p, &req.trailers_len);
  req.body = c->body_open ? NULL : rq->body.data ? rq->body.data : "";
  req.body_len = c->body_open ? 0 : rq->body.len;
  if (srv->access_fd >= 0) http_alog_request(c, req.method);
  scoreboard_activity(srv->sb, req.method, strlen(req.method), req.url, req.url_len);
  c->state = HTTP_CONN_HANDLING;
  c->head_sent = 0;
  if (c->wq != NULL) writeq_forget_drain(c->wq);
  c->lua_owned = 1;
  c->gen++;
  if (!c->body_open) http_conn_timer(c, srv->cfg->request_timeout_ms); /* else the body's timer runs on */
  int r = srv->cb.on_request(srv->data, c, c->gen, &req);
  if (!c->body_streamed && c->rq == rq) {
    http_parse_next(p, HTTP_KEEP_BUF);
    mf_buf_reset(&rq->body, HTTP_KEEP_BUF);
    http_body_release(c);
  }
  if (r != 0) http_conn_fail(c, 500);
}

/* A request the parser refused: our own error answer. */
static void conn_refuse(http_conn_t *c) {
  http_parse_t *p = &c->rq->parser;
  int status = p->err_status ? p->err_status : 400;
  if (status == 400)
    mf_log("bad request from %s: %s (%s)", http_conn_remote(c), llhttp_errno_name(llhttp_get_errno(&p->llhttp)),
           http_parse_error(p));
  http_conn_fail(c, status);
}

/* Keeps input that arrived while a request is handled, or behind older input. Every read that is not
 * parsed at once comes here, so reading stops once a whole request's worth (--max-header-size plus
 * --max-body) waits. Returns 0, or -1 when the connection closed. */
static int conn_hold(http_conn_t *c, const char *data, size_t len) {
  http_rq_t *rq = http_conn_rq(c);
  if (rq == NULL || mf_buf_append(&rq->pending, data, len) != 0) {
    http_conn_close(c);
    return -1;
  }
  const mf_config_t *cfg = c->srv->cfg;
  if (rq->pending.len > cfg->max_header_size + cfg->max_body && !c->read_paused && c->state != HTTP_CONN_TAKEN) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->read_paused = 1;
  }
  return 0;
}

/* What the connection keeps of the message being handled. */
static void conn_note(http_conn_t *c, int keep_alive) {
  c->keep_alive = keep_alive;
  c->client_close = !c->keep_alive;
  const llhttp_t *l = &c->rq->parser.llhttp;
  c->is_head = l->method == HTTP_HEAD;
  c->http11 = l->http_major == 1 && l->http_minor >= 1;
}

/* The head is complete and its body was not by the end of the read: the handler starts now, and
 * reads the body as it comes (or takes it whole once it is complete: http_body.c). */
static void conn_dispatch_early(http_conn_t *c) {
  conn_note(c, http_parse_keep_alive(&c->rq->parser));
  c->body_open = c->body_streamed = 1;
  c->body_mode = HTTP_BODY_UNDECIDED;
  c->rq->body_gen = c->gen + 1; /* (conn_dispatch counts it) */
  conn_dispatch(c);
}

/* The parser refused a message: mid-body, its handler hears why first; a body being dropped after our
 * response only ends the connection. */
static void conn_body_refused(http_conn_t *c) {
  int open = c->body_open, dropping = open && c->body_mode == HTTP_BODY_DISCARD;
  if (open) http_body_fail(c, c->rq->parser.err_status);
  if (dropping) {
    http_conn_end(c);
    return;
  }
  conn_refuse(c);
  if (open) http_body_tell(c);
}

/* Feeds input to the parser, one request at a time. */
static void conn_process(http_conn_t *c, const char *data, size_t len) {
  if (http_conn_rq(c) == NULL) {
    http_conn_close(c);
    return;
  }
  c->in_process = 1;
  while (len > 0 && !c->closing && c->state != HTTP_CONN_CLOSING && c->state != HTTP_CONN_TAKEN) {
    if (c->state == HTTP_CONN_HANDLING && !c->body_open) { /* a pipelined request: it waits its turn */
      conn_hold(c, data, len);
      break;
    }
    size_t used;
    http_parse_t *p = &http_conn_rq(c)->parser; /* (a takeover's rq was released: conn_hold made one) */
    int r = http_parse_feed(p, data, len, &used);
    if (r == HTTP_PARSE_MORE) {
      if (c->body_open)
        http_body_fed(c);
      else if (c->state == HTTP_CONN_BODY && !p->llhttp.upgrade) /* the body is still to come */
        conn_dispatch_early(c);
      break;
    }
    if (r == HTTP_PARSE_ERROR) {
      conn_body_refused(c);
      break;
    }
    data += used;
    len -= used;
    if (c->body_open) { /* the end of a body the handler (or the discarding) had */
      http_body_complete(c);
      continue;
    }
    conn_note(c, p->keep_alive);
    if (r == HTTP_PARSE_UPGRADE) { /* what follows is another protocol's: kept for a takeover */
      c->upgrade = 1;
      if (len > 0 && conn_hold(c, data, len) != 0) break;
      len = 0;
    }
    conn_dispatch(c);
  }
  c->in_process = 0;
  conn_rq_release(c);
}

/* Runs input that waited behind a finished response. */
static void conn_resume(http_conn_t *c) {
  if (c->closing || c->state == HTTP_CONN_HANDLING || c->state == HTTP_CONN_TAKEN) return;
  if (c->rq != NULL && c->rq->pending.len > 0) {
    mf_buf_t input = c->rq->pending;
    mf_buf_init(&c->rq->pending);
    conn_process(c, input.data, input.len);
    mf_buf_free(&input);
  }
  if (c->closing) return;
  if (c->state != HTTP_CONN_HANDLING) http_conn_read_again(c);
}

static void on_idle(uv_idle_t *idle) {
  http_server_t *srv = mf_container_of(idle, http_server_t, idle);
  http_conn_t *list = srv->resume_head;
  srv->resume_head = NULL;
  uv_idle_stop(idle);
  while (list != NULL) {
    http_conn_t *c = list;
    list = c->resume_next;
    c->queued = 0;
    conn_resume(c);
  }
}

/* ---- taking over after an Upgrade ---------------------------------------------------------- */

/* Everything written is out: the new owner gets the socket and what was read past the request. */
static void takeover_finish(http_conn_t *c) {
  uv_os_fd_t fd;
  int nfd = uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
  if (nfd < 0) nfd = uv_translate_sys_error(errno);
  http_rq_t *rq = c->rq;
  http_takeover_cb cb = rq->takeover_cb;
  rq->takeover_cb = NULL;
  cb(rq->takeover_arg, nfd, rq->pending.data ? rq->pending.data : "", rq->pending.len);
  rq->pending.len = 0;
  http_conn_close(c); /* our copy of the socket: the new owner's lives on */
}

int http_conn_takeover(http_conn_t *c, uint32_t gen, http_takeover_cb cb, void *arg) {
  if (c == NULL || c->closing || c->state != HTTP_CONN_HANDLING || gen != c->gen) return UV_EPIPE;
  if (!c->upgrade || !c->head_sent) return UV_EINVAL; /* no Upgrade asked for, or no 101 written */
  http_rq_t *rq = http_conn_rq(c);
  if (rq == NULL) return UV_ENOMEM;
  c->state = HTTP_CONN_TAKEN;
  rq->takeover_cb = cb;
  rq->takeover_arg = arg;
  c->lua_owned = 0; /* the request is over: its handler hears no "close" */
  http_conn_timer(c, 0);
  uv_read_stop((uv_stream_t *)&c->tcp); /* what comes next is read by the new owner */
  http_server_count_response(c->srv);
  http_alog_response(c);
  if (http_conn_queued(c) == 0)
    takeover_finish(c);
  else
    writeq_drain_when_empty(c->wq); /* on_write_drain finishes it */
  return 0;
}

/* ---- parser callbacks ------------------------------------------------------------------------ */

static http_conn_t *conn_of(http_parse_t *p) { return p->data; }

static int on_message_begin(http_parse_t *p) {
  http_conn_t *c = conn_of(p);
  c->state = HTTP_CONN_HEAD;
  c->keep_alive = 0;
  c->upgrade = 0;
  http_conn_timer(c, c->srv->cfg->header_timeout_ms);
  return 0;
}

static int on_head(http_parse_t *p) {
  http_conn_t *c = conn_of(p);
  llhttp_t *l = &p->llhttp;
  c->state = HTTP_CONN_BODY;
  c->http11 = l->http_major == 1 && l->http_minor >= 1;
  int has_body = (l->flags & F_CHUNKED) || ((l->flags & F_CONTENT_LENGTH) && l->content_length > 0);
  if ((l->flags & F_CONTENT_LENGTH) && l->content_length > c->srv->cfg->max_body) {
    p->err_status = 413;
    return -1;
  }
  if (has_body) {
    uint64_t timeout = c->srv->cfg->body_timeout_ms;
    c->rq->body_until = timeout ? uv_now(c->srv->loop) + timeout : 0;
    /* a body of known length is counted whole from the start, so bodies trickling in together cannot
     * all pass the budget's check while each is still small */
    if ((l->flags & F_CONTENT_LENGTH) && http_body_count(c, l->content_length) != 0) return -1;
    http_body_timer(c);
  }
  size_t vlen;
  const char *expect = has_body && c->http11 ? http_parse_find(p, "expect", &vlen) : NULL;
  if (expect != NULL) {
    if (vlen != 12 || strncasecmp(expect, "100-continue", 12) != 0) {
      p->err_status = 417;
      return -1;
    }
    uv_buf_t b = uv_buf_init("HTTP/1.1 100 Continue\r\n\r\n", 25);
    if (http_conn_write(c, &b, 1) < 0) return -1;
  }
  return 0;
}

static int on_body(http_parse_t *p, const char *at, size_t len) {
  http_conn_t *c = conn_of(p);
  if (c->body_open) return http_body_piece(c, at, len);
  if (!(p->llhttp.flags & F_CONTENT_LENGTH) && http_body_count(c, len) != 0) return -1; /* chunked: as it grows */
  mf_buf_t *b = &c->rq->body;
  return http_parse_append(p, b, at, len, b->len + len, c->srv->cfg->max_body, 413);
}

static const http_parse_callbacks_t conn_parse_callbacks = {on_message_begin, on_head, on_body};

/* ---- connections ----------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
  http_conn_t *c = h->data;
  http_server_t *srv = c->srv;
  if (c->in_chan) http_chan_leave_all(c);
  if (c->user_ref != MF_NO_REF && srv->cb.on_conn_closed) srv->cb.on_conn_closed(srv->data, c, c->lua_owned);
  http_server_conn_removed(srv, c);
  if (c->rq != NULL) {
    http_body_release(c);
    conn_rq_put(c);
  }
  if (c->wq != NULL) free(mf_container_of(c->wq, http_send_t, wq));
  free(c);
  http_server_conn_gone(srv);
}

void http_conn_close(http_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  http_server_heap_remove(c->srv, c);
  if (c->state == HTTP_CONN_TAKEN && c->rq != NULL && c->rq->takeover_cb != NULL) { /* before the 101 was out */
    http_takeover_cb cb = c->rq->takeover_cb;
    c->rq->takeover_cb = NULL;
    cb(c->rq->takeover_arg, UV_ECONNABORTED, "", 0);
  }
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  http_conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  http_conn_t *c = s->data;
  if (nread < 0) {
    http_conn_close(c); /* EOF or error: the client is gone, even mid-request (as nginx treats it) */
    return;
  }
  if (nread == 0 || c->closing || c->state == HTTP_CONN_CLOSING) return;
  if (c->state == HTTP_CONN_BODY || (c->body_open && c->state == HTTP_CONN_HANDLING)) http_body_timer(c);
  if (conn_pending(c) > 0 || c->queued || c->state == HTTP_CONN_TAKEN) {
    conn_hold(c, buf->base, (size_t)nread); /* older input is still waiting its turn: keep the order */
    return;
  }
  conn_process(c, buf->base, (size_t)nread);
}

/* A client usually sends its request right behind its connect, so it is often there by the time we
 * accept: read it at once instead of waiting for epoll to say so. libuv registers the socket with
 * epoll only at the loop's next poll (uv_read_start just queues it), so a request answered with
 * `Connection: close` right here costs no epoll_ctl(ADD) and no wake-up of its own; when nothing is
 * there yet (EAGAIN) the connection is watched as usual. */
static void conn_first_read(http_conn_t *c, int fd) {
  http_server_t *srv = c->srv;
  ssize_t n;
  do n = read(fd, srv->readbuf, sizeof srv->readbuf);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  if (n <= 0) {
    http_conn_close(c); /* EOF or error: as on_read */
    return;
  }
  conn_process(c, srv->readbuf, (size_t)n);
}

/* A new connection on `fd` (ours now). */
void http_conn_new(http_server_t *srv, int fd) {
  http_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    close(fd);
    return;
  }
  c->srv = srv;
  c->user_ref = MF_NO_REF;
  uv_tcp_init(srv->loop, &c->tcp);
  c->tcp.data = c;
  http_server_conn_added(srv, c);
  if (uv_tcp_open(&c->tcp, fd) != 0) {
    close(fd);
    http_conn_close(c);
    return;
  }
  c->state = HTTP_CONN_IDLE;
  http_conn_timer(c, srv->cfg->header_timeout_ms);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  conn_first_read(c, fd);
}

int *http_conn_user_ref(http_conn_t *c) { return &c->user_ref; }
uint32_t http_conn_gen(const http_conn_t *c) { return c->gen; }

/* Looked up each time it is asked for (a getpeername; only logs and req.remoteAddress ask, and Lua
 * keeps what it got), rather than kept in every connection: 8 bytes of http_conn_t are the difference
 * between a 448- and a 432-byte malloc chunk. The name is in one buffer per worker, valid until the
 * next call: callers use it at once. */
const char *http_conn_remote(http_conn_t *c) {
  static char name[64];
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  strcpy(name, "-");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0)
    ;
  else if (ss.ss_family == AF_INET6)
    uv_ip6_name((struct sockaddr_in6 *)&ss, name, sizeof name);
  else
    uv_ip4_name((struct sockaddr_in *)&ss, name, sizeof name);
  return name;
}
