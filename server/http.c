/* http.c -- HTTP/1.1 connections in a worker: accept, parse, limits, timeouts, pipelining, responses.
 *
 * A connection handles one request at a time. llhttp is paused at the end of each message; bytes that
 * arrive after it (pipelined requests) wait in `pending` until the response is finished, so responses
 * always leave in request order. Lua never runs inside an llhttp callback: the request is handed over
 * only after llhttp_execute returned, and a response finished from inside Lua resumes the parser later,
 * from an idle handle, never re-entering the Lua state that called us.
 *
 * Reads land in one buffer shared by the whole worker (libuv hands it back before the next read), so an
 * idle keep-alive connection costs only its struct: no per-connection read buffer. */
#define _GNU_SOURCE /* accept4 */
#include "http.h"

#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "scoreboard.h"
#include "util.h"
#include "writeq.h"

#define HTTP_READ_BUF (64 * 1024)
#define HTTP_HIGH_WATER (256 * 1024)   /* send queue above which respond() says "slow down" */
#define HTTP_LINGER_MS 2000            /* after our FIN, how long we drain what the client still sends */
#define HTTP_KEEP_BUF 4096             /* buffers above this are given back between requests */
#define HTTP_ACCEPTS_PER_WAKE 4        /* connections taken per wake-up of the listener: see on_listener */

enum conn_state {
  S_IDLE,     /* between requests: waiting for the first byte */
  S_HEAD,     /* receiving the request line and headers */
  S_BODY,     /* receiving the body */
  S_HANDLING, /* the handler has the request; its response is not finished */
  S_CLOSING,  /* our response is out, FIN sent: discarding input until the client closes */
};

typedef struct {
  uint32_t name_off, name_len, value_off, value_len;
} hdr_t;

struct http_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  llhttp_t parser;
  http_server_t *srv;
  http_conn_t *prev, *next;  /* the server's list of connections */
  http_conn_t *resume_next;  /* the server's list of connections whose pipelined input waits */
  enum conn_state state;
  unsigned closing : 1;      /* uv_close called */
  unsigned in_process : 1;   /* inside conn_process: it will pick up the next request itself */
  unsigned queued : 1;       /* on the resume list */
  unsigned read_paused : 1;  /* stopped reading: too much pipelined input waits */
  unsigned head_sent : 1;
  unsigned chunked : 1;
  unsigned keep_alive : 1;
  unsigned client_close : 1; /* the client itself asked to close after this request */
  unsigned is_head : 1;
  unsigned http11 : 1;
  unsigned upgrade : 1;
  unsigned in_value : 1;     /* llhttp is inside a header value (the entry is open) */
  unsigned want_drain : 1;   /* respond() said "slow down": tell the handler when the queue empties */
  int status;                /* of the response, for the access log */
  uint64_t bytes_out;        /* body bytes of the response */
  mf_buf_t alog;             /* access log: "request line" then '\0' then referer '\0' user agent */
  int err_status;            /* set by a callback that refused the request (413, 431) */
  int handles_open;
  uint32_t gen;
  uint32_t head_bytes;
  int user_ref;
  hdr_t *hdrs;
  uint32_t nhdrs, hdrs_cap;
  uint32_t url_len;
  mf_buf_t head;             /* url, then header names and values */
  mf_buf_t body;
  mf_buf_t pending;          /* input received while a request is being handled */
  unsigned lua_owned : 1;    /* a handler has the current request: tell it when the connection goes */
  unsigned nodelay : 1;      /* TCP_NODELAY is set */
  uint64_t deadline;         /* loop time (ms) the current timeout ends, 0 = none (see conn_timer) */
  uint64_t timer_due;        /* when the timer is set to fire */
  char remote[64];           /* the peer's address, looked up on first use ("" until then) */
};

struct http_server_s {
  uv_loop_t *loop;
  uv_poll_t listener;        /* the shared listening socket; we accept ourselves (see on_listener) */
  uv_timer_t accept_retry;   /* after EMFILE and the like */
  int listen_fd;
  uv_idle_t idle;
  const mf_config_t *cfg;
  http_callbacks_t cb;
  void *data;
  llhttp_settings_t settings;
  http_conn_t *conns;
  http_conn_t *resume_head;
  size_t nconns;
  size_t nconns_peak;        /* the most open at once since http_server_take_conn_peak */
  uint64_t requests;
  uint64_t request_limit;    /* on_limit fires when requests reaches it (0 = never) */
  int listener_closed, accept_paused, draining, drained_fired;

  mf_buf_t out;              /* response head being assembled (reused) */
  mf_scoreboard_t *sb;       /* where the master sees what this worker runs (may be NULL) */
  mf_board_t *board;         /* every worker's entry (may be NULL) */
  int sb_index;
  int access_fd;
  mf_buf_t access;           /* access log lines, written once per loop turn */
  uv_prepare_t flush;
  time_t alog_at;
  char alog_time[40];
  time_t date_at;
  char date[48];             /* "Date: ...\r\n" for date_at */
  size_t date_len;
  char readbuf[HTTP_READ_BUF];
};

static void conn_process(http_conn_t *c, const char *data, size_t len);
static void conn_close(http_conn_t *c);
static void conn_fail(http_conn_t *c, int status);
static void server_accept(http_server_t *srv);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static const hdr_t *find_header(http_conn_t *c, const char *name);
static void alog_request(http_conn_t *c, const char *method, const hdr_t *referer, const hdr_t *agent);
static void alog_response(http_conn_t *c);

/* ---- small pieces ---------------------------------------------------------------------------- */

/* Counted in the worker, for every response, so --max-requests holds at any request rate. */
static void server_count_request(http_server_t *srv) {
  if (++srv->requests == srv->request_limit && srv->cb.on_limit) srv->cb.on_limit(srv->data, srv->requests);
}

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

static void conn_timer(http_conn_t *c, uint64_t ms);

static void on_timer(uv_timer_t *t) {
  http_conn_t *c = mf_container_of(t, http_conn_t, timer);
  if (c->deadline == 0) return; /* disarmed since */
  uint64_t now = uv_now(c->srv->loop);
  if (now < c->deadline) { /* moved later since: sleep again until then */
    c->timer_due = c->deadline;
    uv_timer_start(&c->timer, on_timer, c->deadline - now, 0);
    return;
  }
  c->deadline = 0;
  switch (c->state) {
    case S_IDLE:
      conn_close(c);
      break;
    case S_HEAD:
    case S_BODY:
      conn_fail(c, 408);
      break;
    case S_HANDLING:
      if (!c->head_sent) {
        mf_log("request timed out after %.1f s without a response; answering 503",
               (double)c->srv->cfg->request_timeout_ms / 1000.0);
        conn_fail(c, 503);
      }
      break;
    case S_CLOSING:
      conn_close(c);
      break;
  }
}

/* Sets the connection's one deadline, `ms` from now; 0 clears it. A request moves the deadline four
 * times (headers, handler, response started, keep-alive), so the timer is only re-armed when the
 * deadline comes sooner than it is set for; when it fires early it sleeps again until the deadline. */
static void conn_timer(http_conn_t *c, uint64_t ms) {
  if (ms == 0) {
    c->deadline = 0;
    return;
  }
  c->deadline = uv_now(c->srv->loop) + ms;
  if (uv_is_active((uv_handle_t *)&c->timer) && c->timer_due <= c->deadline) return;
  c->timer_due = c->deadline;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- response heads, without printf (they are written for every response) -------------------- */

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

/* ---- writing --------------------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  http_conn_t *c = req->handle->data;
  mf_writeq_done(req);
  if (status < 0) {
    if (status != UV_ECANCELED) conn_close(c);
    return;
  }
  if (c->want_drain && !c->closing &&
      uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) <= HTTP_HIGH_WATER / 2) {
    c->want_drain = 0;
    if (c->state == S_HANDLING && c->srv->cb.on_drain) c->srv->cb.on_drain(c->srv->data, c);
  }
}

/* Sends bufs (see writeq.c). Returns 0, or -1 when the connection failed (it is then closing). */
static int conn_write(http_conn_t *c, uv_buf_t *bufs, unsigned n) {
  if (c->closing) return -1;
  if (mf_writeq((uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
    conn_close(c);
    return -1;
  }
  return 0;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  http_conn_t *c = req->handle->data;
  if (status < 0 || c->closing) {
    conn_close(c);
    return;
  }
  /* Keep reading (and dropping) what the client still sends: closing with unread input makes the
   * kernel send RST, which can destroy our last response before the client reads it. */
  conn_timer(c, HTTP_LINGER_MS);
}

/* The response that ends this connection is written: send FIN once it is flushed, then linger. */
static void conn_end(http_conn_t *c) {
  if (c->closing || c->state == S_CLOSING) return;
  c->state = S_CLOSING;
  c->pending.len = 0;
  conn_timer(c, HTTP_LINGER_MS);
  if (c->read_paused) { /* read again, so the linger sees the client's FIN */
    c->read_paused = 0;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) conn_close(c);
}

/* Answers with an error status of our own and ends the connection. */
static void conn_fail(http_conn_t *c, int status) {
  if (c->closing || c->state == S_CLOSING) return;
  if (c->head_sent) { /* the handler's response is half out: nothing sane can follow it */
    conn_close(c);
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
  server_count_request(srv);
  if (c->alog.len == 0 && srv->access_fd >= 0) mf_buf_append(&c->alog, "-\0-\0-", 6); /* not a request we could read */
  alog_response(c);
  if (conn_write(c, &b, 1) == 0) conn_end(c);
}

/* ---- the request/response cycle ------------------------------------------------------------- */

static void request_reset(http_conn_t *c) {
  c->nhdrs = 0;
  c->url_len = 0;
  c->head_bytes = 0;
  c->in_value = 0;
  c->err_status = 0;
  mf_buf_reset(&c->head, HTTP_KEEP_BUF);
  mf_buf_reset(&c->body, HTTP_KEEP_BUF);
  if (c->hdrs_cap > 64) {
    free(c->hdrs);
    c->hdrs = NULL;
    c->hdrs_cap = 0;
  }
}

static void on_idle(uv_idle_t *idle);

static void conn_queue_resume(http_conn_t *c) {
  if (c->queued || c->closing) return;
  c->queued = 1;
  c->resume_next = c->srv->resume_head;
  c->srv->resume_head = c;
  uv_idle_start(&c->srv->idle, on_idle);
}

/* ---- the access log ------------------------------------------------------------------------- */

static void on_flush(uv_prepare_t *p) {
  http_server_t *srv = mf_container_of(p, http_server_t, flush);
  if (srv->access.len == 0) return;
  /* One write of whole lines: with O_APPEND, lines from several workers never interleave. */
  ssize_t n = write(srv->access_fd, srv->access.data, srv->access.len);
  (void)n; /* a full disk loses log lines, not requests */
  mf_buf_reset(&srv->access, 64 * 1024);
}

void http_server_set_scoreboard(http_server_t *srv, mf_board_t *board, int index) {
  srv->board = board;
  srv->sb_index = index;
  srv->sb = &board->e[index];
}

void http_server_set_draining(http_server_t *srv) { srv->draining = 1; }

void http_server_set_access_log(http_server_t *srv, int fd) {
  if (srv->access_fd >= 0 && fd != srv->access_fd) on_flush(&srv->flush); /* nothing buffered is lost */
  srv->access_fd = fd;
  if (fd >= 0 && !uv_is_active((uv_handle_t *)&srv->flush)) uv_prepare_start(&srv->flush, on_flush);
}

/* Appends s with quotes, backslashes and control bytes escaped (as nginx does). */
static void alog_escape(mf_buf_t *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
      mf_buf_appendf(b, "\\x%02X", ch);
    else
      mf_buf_append(b, s + i, 1);
  }
}

/* At dispatch: keeps what the log line needs from the request, which is freed before the response. */
static void alog_request(http_conn_t *c, const char *method, const hdr_t *referer, const hdr_t *agent) {
  mf_buf_t *b = &c->alog;
  b->len = 0;
  alog_escape(b, method, strlen(method));
  mf_buf_append(b, " ", 1);
  alog_escape(b, c->head.data ? c->head.data : "", c->url_len);
  mf_buf_appendf(b, " HTTP/%d.%d", c->parser.http_major, c->parser.http_minor);
  mf_buf_append(b, "", 1);
  if (referer) alog_escape(b, c->head.data + referer->value_off, referer->value_len);
  else mf_buf_append(b, "-", 1);
  mf_buf_append(b, "", 1);
  if (agent) alog_escape(b, c->head.data + agent->value_off, agent->value_len);
  else mf_buf_append(b, "-", 1);
  mf_buf_append(b, "", 1);
}

/* Combined log format: host - - [time] "request" status bytes "referer" "user agent" */
static void alog_response(http_conn_t *c) {
  http_server_t *srv = c->srv;
  if (srv->access_fd < 0 || c->alog.len == 0) return;
  time_t now = time(NULL);
  if (now != srv->alog_at) {
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(srv->alog_time, sizeof srv->alog_time, "%d/%b/%Y:%H:%M:%S %z", &tm);
    srv->alog_at = now;
  }
  const char *req = c->alog.data;
  const char *ref = req + strlen(req) + 1;
  const char *ua = ref + strlen(ref) + 1;
  char bytes[24] = "-";
  if (c->bytes_out > 0) snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)c->bytes_out);
  mf_buf_appendf(&srv->access, "%s - - [%s] \"%s\" %d %s \"%s\" \"%s\"\n", http_conn_remote(c), srv->alog_time, req,
                 c->status, bytes, ref, ua);
  c->alog.len = 0;
}

/* The response is finished: get ready for the next request on this connection, or end it. */
static void request_done(http_conn_t *c) {
  http_server_t *srv = c->srv;
  c->lua_owned = 0;
  server_count_request(srv);
  alog_response(c);
  if (!c->keep_alive || c->upgrade) {
    /* A client that asked to close sends nothing more: with nothing unread and nothing queued, no RST
     * can hurt the response, so close now instead of lingering for its FIN. */
    if (c->client_close && !c->upgrade && c->pending.len == 0 &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0)
      conn_close(c);
    else
      conn_end(c);
    return;
  }
  if (srv->draining) { /* its head promised keep-alive before the drain began */
    conn_end(c);
    return;
  }
  c->state = S_IDLE;
  c->head_sent = 0;
  conn_timer(c, srv->cfg->keepalive_timeout_ms);
  if (!c->in_process && (c->pending.len > 0 || c->read_paused)) conn_queue_resume(c);
}

int http_conn_respond(http_conn_t *c, uint32_t gen, int status, const char *head, size_t head_len,
                      const char *body, size_t body_len, int final, int64_t clen, int flags) {
  if (c == NULL || c->closing || c->state != S_HANDLING || gen != c->gen) return -1;
  http_server_t *srv = c->srv;
  /* HEAD, 1xx, 204 and 304 responses carry no body, whatever the handler writes. */
  int no_body_status = status < 200 || status == 204 || status == 304;
  int send_body = !c->is_head && !no_body_status;
  uv_buf_t bufs[3];
  unsigned n = 0;
  srv->out.len = 0;
  if (!c->head_sent) {
    size_t dlen;
    const char *date = date_header(srv, &dlen);
    if (srv->draining || (flags & HTTP_RESP_CLOSE)) c->keep_alive = 0;
    append_status_line(&srv->out, status);
    mf_buf_append(&srv->out, date, dlen);
    mf_buf_append(&srv->out, head, head_len);
    c->chunked = 0;
    if (clen >= 0 || no_body_status) {
      /* the handler's own Content-Length is among its headers */
    } else if (final) {
      mf_buf_append(&srv->out, "Content-Length: ", 16);
      append_uint(&srv->out, body_len);
      mf_buf_append(&srv->out, "\r\n", 2);
    } else if (c->http11) {
      mf_buf_append(&srv->out, "Transfer-Encoding: chunked\r\n", 28);
      c->chunked = 1;
    } else {
      c->keep_alive = 0; /* an HTTP/1.0 body of unknown length ends when the connection does */
    }
    if (!c->keep_alive)
      mf_buf_append(&srv->out, "Connection: close\r\n", 19);
    else if (!c->http11)
      mf_buf_append(&srv->out, "Connection: keep-alive\r\n", 24);
    mf_buf_append(&srv->out, "\r\n", 2);
    c->head_sent = 1;
    c->status = status;
    c->bytes_out = 0;
    conn_timer(c, 0); /* the request timeout covers only the wait for a response to start */
  }
  if (send_body) c->bytes_out += body_len;
  /* Nagle only delays a write that follows an unacknowledged one: a whole response on a connection
   * that then closes never does. Streams and keep-alive connections get TCP_NODELAY (nginx's rule). */
  if (!c->nodelay && (!final || c->keep_alive)) {
    c->nodelay = 1;
    uv_tcp_nodelay(&c->tcp, 1);
  }
  if (send_body && c->chunked) {
    if (body_len > 0) { /* the chunk-size line, without printf: it is written once per chunk */
      char hex[20];
      int k = (int)sizeof hex;
      hex[--k] = '\n';
      hex[--k] = '\r';
      for (size_t v = body_len; v > 0; v >>= 4) hex[--k] = "0123456789abcdef"[v & 15];
      mf_buf_append(&srv->out, hex + k, sizeof hex - (size_t)k);
    }
    if (srv->out.len > 0) bufs[n++] = uv_buf_init(srv->out.data, (unsigned)srv->out.len);
    if (body_len > 0) bufs[n++] = uv_buf_init((char *)body, (unsigned)body_len);
    if (body_len > 0 && final)
      bufs[n++] = uv_buf_init("\r\n0\r\n\r\n", 7);
    else if (body_len > 0)
      bufs[n++] = uv_buf_init("\r\n", 2);
    else if (final)
      bufs[n++] = uv_buf_init("0\r\n\r\n", 5);
  } else {
    if (srv->out.len > 0) bufs[n++] = uv_buf_init(srv->out.data, (unsigned)srv->out.len);
    if (send_body && body_len > 0) bufs[n++] = uv_buf_init((char *)body, (unsigned)body_len);
  }
  if (conn_write(c, bufs, n) != 0) return -1;
  if (final) {
    request_done(c);
    return 1;
  }
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > HTTP_HIGH_WATER) {
    c->want_drain = 1;
    return 0;
  }
  return 1;
}

void http_conn_abort(http_conn_t *c, uint32_t gen) {
  if (c != NULL && gen == c->gen && c->state == S_HANDLING) {
    if (c->head_sent)
      conn_close(c);
    else
      conn_fail(c, 500);
  }
}

int *http_conn_user_ref(http_conn_t *c) { return &c->user_ref; }

const char *http_conn_remote(http_conn_t *c) {
  if (c->remote[0] == '\0') { /* a syscall per connection, so only for those that ask */
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0)
      snprintf(c->remote, sizeof c->remote, "-");
    else if (ss.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&ss, c->remote, sizeof c->remote);
    else
      uv_ip4_name((struct sockaddr_in *)&ss, c->remote, sizeof c->remote);
  }
  return c->remote;
}

/* Hands the complete request to the handler. */
static void conn_dispatch(http_conn_t *c) {
  http_server_t *srv = c->srv;
  enum { STACK_HDRS = 32 };
  const char *names_s[STACK_HDRS], *values_s[STACK_HDRS];
  size_t nlens_s[STACK_HDRS], vlens_s[STACK_HDRS];
  const char **names = names_s, **values = values_s;
  size_t *nlens = nlens_s, *vlens = vlens_s;
  if (c->nhdrs > STACK_HDRS) {
    names = malloc(c->nhdrs * sizeof *names);
    values = malloc(c->nhdrs * sizeof *values);
    nlens = malloc(c->nhdrs * sizeof *nlens);
    vlens = malloc(c->nhdrs * sizeof *vlens);
    if (!names || !values || !nlens || !vlens) {
      free(names), free(values), free(nlens), free(vlens);
      conn_fail(c, 500);
      return;
    }
  }
  for (uint32_t i = 0; i < c->nhdrs; i++) {
    names[i] = c->head.data + c->hdrs[i].name_off;
    nlens[i] = c->hdrs[i].name_len;
    values[i] = c->head.data + c->hdrs[i].value_off;
    vlens[i] = c->hdrs[i].value_len;
  }
  http_request_t req = {
      .method = llhttp_method_name(c->parser.method),
      .url = c->head.data ? c->head.data : "",
      .url_len = c->url_len,
      .http_major = c->parser.http_major,
      .http_minor = c->parser.http_minor,
      .nheaders = c->nhdrs,
      .names = names,
      .name_lens = nlens,
      .values = values,
      .value_lens = vlens,
      .body = c->body.data ? c->body.data : "",
      .body_len = c->body.len,
  };
  if (srv->access_fd >= 0) alog_request(c, req.method, find_header(c, "referer"), find_header(c, "user-agent"));
  mf_scoreboard_activity(srv->sb, req.method, strlen(req.method), req.url, req.url_len);
  c->state = S_HANDLING;
  c->head_sent = 0;
  c->want_drain = 0;
  c->lua_owned = 1;
  c->gen++;
  conn_timer(c, srv->cfg->request_timeout_ms);
  int r = srv->cb.on_request(srv->data, c, c->gen, &req);
  if (names != names_s) free(names), free(values), free(nlens), free(vlens);
  request_reset(c);
  if (r != 0) conn_fail(c, 500);
}

/* Feeds input to the parser, one request at a time. */
static void conn_process(http_conn_t *c, const char *data, size_t len) {
  http_server_t *srv = c->srv;
  c->in_process = 1;
  while (len > 0 && !c->closing && c->state != S_CLOSING) {
    if (c->state == S_HANDLING) {
      /* A pipelined request: keep it until the current response is finished. */
      if (mf_buf_append(&c->pending, data, len) != 0) {
        conn_close(c);
        break;
      }
      if (c->pending.len > srv->cfg->max_header_size + srv->cfg->max_body && !c->read_paused) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->read_paused = 1;
      }
      break;
    }
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK) break;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
      size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
      data += used;
      len -= used;
      if (err == HPE_PAUSED_UPGRADE || c->parser.upgrade) {
        c->upgrade = 1; /* no protocol switch here: answer it, then close */
        len = 0;
      } else {
        llhttp_resume(&c->parser);
      }
      conn_dispatch(c);
      continue;
    }
    int status = c->err_status ? c->err_status : 400;
    if (status == 400)
      mf_log("bad request from %s: %s (%s)", http_conn_remote(c), llhttp_errno_name(err),
             llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser) : "");
    conn_fail(c, status);
    break;
  }
  c->in_process = 0;
}

/* Runs input that waited behind a finished response. */
static void conn_resume(http_conn_t *c) {
  if (c->closing || c->state == S_HANDLING) return;
  mf_buf_t input = c->pending;
  mf_buf_init(&c->pending);
  if (input.len > 0) conn_process(c, input.data, input.len);
  mf_buf_free(&input);
  if (c->closing) return;
  if (c->read_paused && c->state != S_HANDLING) {
    c->read_paused = 0;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
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

/* ---- llhttp callbacks ------------------------------------------------------------------------ */

static int head_add(http_conn_t *c, const char *at, size_t len) {
  http_server_t *srv = c->srv;
  c->head_bytes += (uint32_t)len;
  if (c->head_bytes > srv->cfg->max_header_size) {
    c->err_status = 431;
    return -1;
  }
  if (mf_buf_append(&c->head, at, len) != 0) {
    c->err_status = 500;
    return -1;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  http_conn_t *c = p->data;
  c->state = S_HEAD;
  c->keep_alive = 0;
  c->upgrade = 0;
  conn_timer(c, c->srv->cfg->header_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  if (head_add(c, at, len) != 0) return -1;
  c->url_len += (uint32_t)len;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  if (!c->in_value && (c->nhdrs == 0 || c->hdrs[c->nhdrs - 1].value_off != UINT32_MAX)) {
    /* a new header begins */
    if (c->nhdrs == c->hdrs_cap) {
      uint32_t cap = c->hdrs_cap ? c->hdrs_cap * 2 : 16;
      hdr_t *h = realloc(c->hdrs, cap * sizeof *h);
      if (h == NULL) {
        c->err_status = 500;
        return -1;
      }
      c->hdrs = h;
      c->hdrs_cap = cap;
    }
    hdr_t *h = &c->hdrs[c->nhdrs++];
    h->name_off = (uint32_t)c->head.len;
    h->name_len = 0;
    h->value_off = UINT32_MAX; /* not seen yet */
    h->value_len = 0;
  }
  c->head_bytes += 4; /* ": " and CRLF count against the limit too */
  if (head_add(c, at, len) != 0) return -1;
  c->hdrs[c->nhdrs - 1].name_len += (uint32_t)len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  hdr_t *h = &c->hdrs[c->nhdrs - 1];
  if (h->value_off == UINT32_MAX) h->value_off = (uint32_t)c->head.len;
  c->in_value = 1;
  if (head_add(c, at, len) != 0) return -1;
  h->value_len += (uint32_t)len;
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  http_conn_t *c = p->data;
  hdr_t *h = &c->hdrs[c->nhdrs - 1];
  if (h->value_off == UINT32_MAX) h->value_off = (uint32_t)c->head.len; /* empty value */
  c->in_value = 0;
  return 0;
}

static const hdr_t *find_header(http_conn_t *c, const char *name) {
  size_t n = strlen(name);
  for (uint32_t i = 0; i < c->nhdrs; i++)
    if (c->hdrs[i].name_len == n && strncasecmp(c->head.data + c->hdrs[i].name_off, name, n) == 0)
      return &c->hdrs[i];
  return NULL;
}

static int on_headers_complete(llhttp_t *p) {
  http_conn_t *c = p->data;
  http_server_t *srv = c->srv;
  c->state = S_BODY;
  c->http11 = p->http_major == 1 && p->http_minor >= 1;
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > srv->cfg->max_body) {
    c->err_status = 413;
    return -1;
  }
  const hdr_t *expect = find_header(c, "expect");
  if (expect != NULL && has_body && c->http11) {
    if (expect->value_len == 12 && strncasecmp(c->head.data + expect->value_off, "100-continue", 12) == 0) {
      uv_buf_t b = uv_buf_init("HTTP/1.1 100 Continue\r\n\r\n", 25);
      if (conn_write(c, &b, 1) != 0) return -1;
    } else {
      c->err_status = 417;
      return -1;
    }
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_conn_t *c = p->data;
  if (c->body.len + len > c->srv->cfg->max_body) {
    c->err_status = 413;
    return -1;
  }
  if (mf_buf_append(&c->body, at, len) != 0) {
    c->err_status = 500;
    return -1;
  }
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn_t *c = p->data;
  c->keep_alive = llhttp_should_keep_alive(p) != 0;
  c->client_close = !c->keep_alive;
  c->is_head = p->method == HTTP_HEAD;
  c->http11 = p->http_major == 1 && p->http_minor >= 1;
  return HPE_PAUSED; /* one request at a time: see the top of this file */
}

/* ---- connections ----------------------------------------------------------------------------- */

static void conn_free(http_conn_t *c) {
  http_server_t *srv = c->srv;
  if (c->user_ref != 0 && srv->cb.on_conn_closed) srv->cb.on_conn_closed(srv->data, c, c->lua_owned);
  if (c->queued) {
    http_conn_t **pp = &srv->resume_head;
    while (*pp && *pp != c) pp = &(*pp)->resume_next;
    if (*pp) *pp = c->resume_next;
  }
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->nconns--;
  if (srv->sb) srv->sb->connections = srv->nconns;
  mf_buf_free(&c->head);
  mf_buf_free(&c->body);
  mf_buf_free(&c->pending);
  mf_buf_free(&c->alog);
  free(c->hdrs);
  free(c);
  if (srv->accept_paused && !srv->draining && !uv_is_active((uv_handle_t *)&srv->accept_retry)) {
    srv->accept_paused = 0;
    server_accept(srv); /* under the limit again: take connections */
  }
  if (srv->draining && srv->nconns == 0 && !srv->drained_fired) {
    srv->drained_fired = 1;
    if (srv->cb.on_drained) srv->cb.on_drained(srv->data);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  http_conn_t *c = h->data;
  if (--c->handles_open == 0) conn_free(c);
}

static void conn_close(http_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  http_conn_t *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->srv->readbuf, sizeof c->srv->readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  http_conn_t *c = s->data;
  if (nread < 0) {
    conn_close(c); /* EOF or error: the client is gone, even mid-request (as nginx treats it) */
    return;
  }
  if (nread == 0 || c->closing || c->state == S_CLOSING) return;
  if (c->state == S_BODY) conn_timer(c, c->srv->cfg->header_timeout_ms); /* between body reads */
  if (c->pending.len > 0 || c->queued) {
    /* older input is still waiting its turn: keep the order */
    if (mf_buf_append(&c->pending, buf->base, (size_t)nread) != 0) conn_close(c);
    return;
  }
  conn_process(c, buf->base, (size_t)nread);
}

/* A new connection on `fd` (ours now). */
static void conn_new(http_server_t *srv, int fd) {
  http_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    close(fd);
    return;
  }
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles_open = 2;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  if (++srv->nconns > srv->nconns_peak) srv->nconns_peak = srv->nconns;
  if (srv->sb) srv->sb->connections = srv->nconns;
  if (uv_tcp_open(&c->tcp, fd) != 0) {
    close(fd);
    conn_close(c);
    return;
  }
  llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
  c->parser.data = c;
  c->state = S_IDLE;
  conn_timer(c, srv->cfg->header_timeout_ms);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_listener(uv_poll_t *p, int status, int events);

static void server_accept(http_server_t *srv) {
  if (srv->draining || srv->listener_closed || srv->accept_paused) return;
  uv_poll_start(&srv->listener, UV_READABLE, on_listener);
}

static void on_accept_retry(uv_timer_t *t) {
  http_server_t *srv = mf_container_of(t, http_server_t, accept_retry);
  srv->accept_paused = 0;
  server_accept(srv);
}

/* The listening socket is shared by every worker and each is woken when it is readable. libuv's
 * accept loop would take the whole backlog in the worker that wakes first (a burst of connections
 * all on one worker; Node's docs report 70% on 2 of 8), so we accept ourselves, a few per wake-up:
 * the rest stay in the kernel's queue. Which worker gets there first is the scheduler's whim, so a
 * worker that holds clearly more connections than another ready, live one (the scoreboard says)
 * steps back for 2 ms and lets that one accept. At --max-connections the worker stops polling the
 * socket altogether, leaving new connections to the others. */
static void on_listener(uv_poll_t *p, int status, int events) {
  http_server_t *srv = p->data;
  (void)events;
  if (status < 0) {
    mf_log("listening socket: %s", uv_strerror(status));
    return;
  }
  for (int i = 0; i < HTTP_ACCEPTS_PER_WAKE; i++) {
    /* (With --reuseport the socket is ours alone: what waits there waits for us.) */
    if (!srv->cfg->reuseport && srv->board && mf_board_fewer_elsewhere(srv->board, srv->sb_index, srv->nconns)) {
      srv->accept_paused = 1;
      uv_poll_stop(&srv->listener);
      uv_timer_start(&srv->accept_retry, on_accept_retry, 2, 0);
      return;
    }
    if (srv->nconns >= (size_t)srv->cfg->max_connections) {
      mf_log("connection limit (%ld) reached: not accepting until one closes", srv->cfg->max_connections);
      srv->accept_paused = 1;
      uv_poll_stop(&srv->listener);
      return;
    }
    int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      conn_new(srv, fd);
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) return;
    /* EMFILE, ENFILE, ENOBUFS...: the socket stays readable, so polling it now would spin */
    mf_log("accept: %s: pausing for 100 ms", strerror(errno));
    srv->accept_paused = 1;
    uv_poll_stop(&srv->listener);
    uv_timer_start(&srv->accept_retry, on_accept_retry, 100, 0);
    return;
  }
}

/* ---- the server ------------------------------------------------------------------------------ */

http_server_t *http_server_new(uv_loop_t *loop, const mf_config_t *cfg, int fd, const http_callbacks_t *cb,
                               void *data, char *err, size_t errlen) {
  http_server_t *srv = calloc(1, sizeof *srv);
  if (srv == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->loop = loop;
  srv->cfg = cfg;
  srv->cb = *cb;
  srv->data = data;
  llhttp_settings_init(&srv->settings);
  srv->settings.on_message_begin = on_message_begin;
  srv->settings.on_url = on_url;
  srv->settings.on_header_field = on_header_field;
  srv->settings.on_header_value = on_header_value;
  srv->settings.on_header_value_complete = on_header_value_complete;
  srv->settings.on_headers_complete = on_headers_complete;
  srv->settings.on_body = on_body;
  srv->settings.on_message_complete = on_message_complete;
  uv_idle_init(loop, &srv->idle);
  uv_prepare_init(loop, &srv->flush);
  uv_unref((uv_handle_t *)&srv->flush);
  srv->access_fd = -1;
  uv_timer_init(loop, &srv->accept_retry);
  uv_unref((uv_handle_t *)&srv->accept_retry);
  /* Non-blocking: another worker may take the connection between our wake-up and our accept. */
  int fl = fcntl(fd, F_GETFL);
  int r = fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  if (r == 0) r = uv_poll_init(loop, &srv->listener, fd);
  if (r != 0) {
    snprintf(err, errlen, "cannot use the listening socket (fd %d): %s", fd,
             r < 0 && r != -1 ? uv_strerror(r) : strerror(errno));
    return NULL;
  }
  srv->listener.data = srv;
  srv->listen_fd = fd;
  return srv;
}

int http_server_start(http_server_t *srv) {
  return uv_poll_start(&srv->listener, UV_READABLE, on_listener);
}

void http_server_adopt(http_server_t *srv, int fd) { conn_new(srv, fd); }

void http_server_drain(http_server_t *srv, int close_idle) {
  srv->draining = 1;
  if (!srv->listener_closed) {
    srv->listener_closed = 1;
    if (srv->cfg->reuseport) { /* take what is queued on our socket: it may be parked for good */
      int fd;
      while ((fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0 || errno == EINTR)
        if (fd >= 0) conn_new(srv, fd);
    }
    uv_timer_stop(&srv->accept_retry);
    uv_close((uv_handle_t *)&srv->listener, NULL);
    close(srv->listen_fd); /* our copy: the socket lives on in the master and the other workers */
  }
  for (http_conn_t *c = srv->conns, *next; c != NULL; c = next) {
    next = c->next;
    /* Idle between requests: flush, then FIN. A connection yet to send its first request is left to
     * send it (it is answered with Connection: close): closing it could cross that request. */
    if (close_idle && c->state == S_IDLE && c->gen > 0 && c->pending.len == 0 && !c->queued) conn_end(c);
  }
  if (srv->nconns == 0 && !srv->drained_fired) {
    srv->drained_fired = 1;
    if (srv->cb.on_drained) srv->cb.on_drained(srv->data);
  }
}

void http_server_close_all(http_server_t *srv) {
  for (http_conn_t *c = srv->conns; c != NULL; c = c->next) conn_close(c);
}

size_t http_server_conn_count(const http_server_t *srv) { return srv->nconns; }
uint64_t http_server_requests(const http_server_t *srv) { return srv->requests; }

void http_server_set_request_limit(http_server_t *srv, uint64_t n) { srv->request_limit = n; }

size_t http_server_take_conn_peak(http_server_t *srv) {
  size_t peak = srv->nconns_peak;
  srv->nconns_peak = srv->nconns;
  return peak;
}
