/* http_pass.c -- a request passed to an upstream in C: Lua chooses the upstream, C moves the bytes.
 *
 * An exchange takes a connection from its upstream's keep-alive pool (most recently used first) or
 * connects one, writes the rebuilt request head (http_pass_head.c) and the body (whole, or read from
 * the client as it arrives: http_conn_body_read, taken only while the upstream's send queue is under
 * its high-water mark), parses the response with the client's parser (httpc_parse.c) and hands head
 * and body to the server's response path (http_conn_respond), which frames them for the client.
 * When the client's queue is over its high-water mark, reading from the upstream stops until the
 * server's drain callback (the hooks below, called by bind_http.c) says it may go on.
 *
 * A connection goes back to its pool only when the exchange ended cleanly: the whole request sent, a
 * complete response that allows keep-alive, and no byte after it. While pooled it is read (a peer
 * that closes or sends anything gets it closed and dropped) and does not keep the loop alive; the
 * oldest beyond the pool's size, and any idle longer than its idle time, are closed. A pooled
 * connection that fails before any response byte is retried once on a fresh one when the request can
 * be sent again (an idempotent method, its body whole). Exchange memory is kept on a free list: the hot path allocates
 * nothing it can reuse.
 *
 * A 101 to a request that asked for an upgrade ends the exchange another way: its connection and the
 * client's become a tunnel (http_pass_tunnel.c). A 101 nobody asked for is the upstream's failure. */
#include "http_pass.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_pass_internal.h"
#include "httpc_parse.h"

#define PASS_HIGH_WATER (256 * 1024) /* upstream send queue: over it, the client's body waits */

struct pass_pool_s {
  char *name;
  pass_up_t *first, *last; /* idle connections, most recently used first */
  unsigned idle, size;
  uint64_t idle_ms;
  uv_timer_t sweep;
  pass_pool_t *next;
};

struct http_pass_s {
  http_conn_t *c;
  uint32_t gen;
  int status, werr;
  int64_t clen;
  pass_up_t *up;
  pass_pool_t *pool;
  httpc_parse_t p;
  uv_timer_t timer;
  mf_buf_t head; /* the request head, then the response's header lines */
  void *arg;
  const char *body;
  size_t body_len;
  int body_mode;
  struct sockaddr_storage addr;
  char path[108];
  uint64_t connect_ms, send_ms, read_ms, max_body, tunnel_ms;
  http_pass_t *prev, *next; /* the active list (or the free list, next only) */
  unsigned streaming : 1, req_done : 1, headed : 1, sent : 1, reused : 1, retried : 1, up_full : 1,
      client_full : 1, wait_body : 1, got : 1, busy : 1, is_unix : 1, is_head : 1, starting : 1, idempotent : 1,
      upgrade : 1;
  const char *start_err; /* the exchange ended during http_pass_start: why */
};

static struct {
  uv_loop_t *loop;
  http_pass_done_cb done;
  pass_pool_t *pools;
  http_pass_t *active, *spare;
  int draining; /* no new tunnels */
} pass;

static void pass_end(http_pass_t *x, const char *err, int reusable);
static void pass_send(http_pass_t *x);
static void pass_pump(http_pass_t *x);
static void pass_data(http_pass_t *x, const char *data, ssize_t n);
static void pass_timer(http_pass_t *x, uint64_t ms);

void http_pass_init(uv_loop_t *loop, http_pass_done_cb done) {
  pass.loop = loop;
  pass.done = done;
  http_pass_tunnel_init(loop);
}

/* ---- upstream connections and their pools -------------------------------------------------- */

static void pass_up_freed(uv_handle_t *h) { free(h->data); }

static void pass_unidle(pass_up_t *u) {
  pass_pool_t *pool = u->pool;
  if (u->prev) u->prev->next = u->next; else pool->first = u->next;
  if (u->next) u->next->prev = u->prev; else pool->last = u->prev;
  u->prev = u->next = NULL;
  pool->idle--;
}

/* Closes u (taken out of its pool first when pooled); the memory goes in the close callback. */
static void pass_up_close(pass_up_t *u, int pooled) {
  if (pooled) pass_unidle(u);
  u->x = NULL;
  uv_close(&u->h.handle, pass_up_freed);
}

static void pass_sweep(uv_timer_t *t) {
  pass_pool_t *pool = t->data;
  uint64_t now = uv_now(pass.loop);
  while (pool->last && now - pool->last->idle_at >= pool->idle_ms) pass_up_close(pool->last, 1);
  if (pool->idle == 0) uv_timer_stop(t);
}

/* The idle sweep runs every quarter of the idle time while the pool holds idle connections. */
static void pass_sweep_arm(pass_pool_t *pool) {
  if (pool->idle_ms && pool->idle && !uv_is_active((uv_handle_t *)&pool->sweep)) {
    uint64_t every = pool->idle_ms < 100 ? pool->idle_ms : pool->idle_ms / 4;
    uv_timer_start(&pool->sweep, pass_sweep, every, every);
  }
}

/* Back into the pool, most recent first; the least recently used one beyond the size is closed. */
static void pass_up_put(pass_up_t *u) {
  pass_pool_t *pool = u->pool;
  u->x = NULL;
  if (pool->size == 0) {
    pass_up_close(u, 0);
    return;
  }
  if (pool->idle >= pool->size) pass_up_close(pool->last, 1);
  u->idle_at = uv_now(pass.loop);
  u->prev = NULL;
  u->next = pool->first;
  if (pool->first) pool->first->prev = u; else pool->last = u;
  pool->first = u;
  pool->idle++;
  uv_unref(&u->h.handle);
  pass_sweep_arm(pool);
}

static pass_pool_t *pass_pool(const http_pass_upstream_t *up) {
  pass_pool_t *pool;
  for (pool = pass.pools; pool; pool = pool->next)
    if (strcmp(pool->name, up->name) == 0) break;
  if (pool == NULL) {
    pool = calloc(1, sizeof *pool);
    if (pool == NULL || (pool->name = strdup(up->name)) == NULL) {
      free(pool);
      return NULL;
    }
    uv_timer_init(pass.loop, &pool->sweep);
    uv_unref((uv_handle_t *)&pool->sweep);
    pool->sweep.data = pool;
    pool->next = pass.pools;
    pass.pools = pool;
  }
  if (pool->size != up->pool_size || pool->idle_ms != up->idle_ms) uv_timer_stop(&pool->sweep);
  pool->size = up->pool_size; /* the latest call's settings */
  pool->idle_ms = up->idle_ms;
  while (pool->idle > pool->size) pass_up_close(pool->last, 1);
  pass_sweep_arm(pool);
  return pool;
}

static void pass_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  pass_up_t *u = s->data;
  if (n == 0) return;
  if (u->x == NULL) { /* pooled: the peer closed, or said something nobody asked for */
    pass_up_close(u, 1);
    return;
  }
  pass_data(u->x, buf->base, n);
}

static void pass_up_drained(writeq_t *q) {
  pass_up_t *u = mf_container_of(q, pass_up_t, q);
  if (u->x && u->x->up_full) {
    u->x->up_full = 0;
    pass_timer(u->x, u->x->read_ms);
    pass_pump(u->x);
  }
}

static void pass_up_failed(writeq_t *q, int status) {
  pass_up_t *u = mf_container_of(q, pass_up_t, q);
  if (u->x) pass_data(u->x, NULL, status);
}

static void pass_connected(uv_connect_t *req, int status) {
  pass_up_t *u = req->data;
  if (u->x == NULL) return; /* the exchange ended meanwhile: u is being closed */
  if (status != 0) {
    pass_data(u->x, NULL, status);
    return;
  }
  net_connect_ready(&u->h);
  int r = net_connect_read(&u->h, pass_read);
  if (r != 0) {
    pass_data(u->x, NULL, r);
    return;
  }
  pass_send(u->x);
}

/* A new connection for x, connecting. 0 or a negative UV_E* code. */
static int pass_connect(http_pass_t *x) {
  pass_up_t *u = calloc(1, sizeof *u);
  if (u == NULL) return UV_ENOMEM;
  int r = net_connect_init(pass.loop, &u->h, x->is_unix, u);
  if (r != 0) {
    free(u);
    return r;
  }
  u->pool = x->pool;
  u->x = x;
  writeq_init(&u->q, &u->h.stream, PASS_HIGH_WATER, pass_up_drained, pass_up_failed);
  const struct sockaddr *addr = x->is_unix ? NULL : (struct sockaddr *)&x->addr;
  if ((r = net_connect_start(&u->h, &u->creq, addr, x->path, pass_connected, u)) != 0) {
    u->x = NULL;
    uv_close(&u->h.handle, pass_up_freed);
    return r;
  }
  x->up = u;
  x->reused = 0;
  return 0;
}

/* ---- the exchange ------------------------------------------------------------------------------ */

static void pass_timeout(uv_timer_t *t) {
  http_pass_t *x = t->data;
  pass_data(x, NULL, UV_ETIMEDOUT);
}

static void pass_timer(http_pass_t *x, uint64_t ms) {
  if (ms)
    uv_timer_start(&x->timer, pass_timeout, ms, 0);
  else
    uv_timer_stop(&x->timer);
}

static http_pass_t *pass_new(void) {
  http_pass_t *x = pass.spare;
  if (x) {
    pass.spare = x->next;
  } else {
    if ((x = calloc(1, sizeof *x)) == NULL) return NULL;
    httpc_parse_init(&x->p);
    mf_buf_init(&x->head);
    uv_timer_init(pass.loop, &x->timer);
    x->timer.data = x;
  }
  return x;
}

static void pass_link(http_pass_t *x) {
  x->prev = NULL;
  x->next = pass.active;
  if (pass.active) pass.active->prev = x;
  pass.active = x;
}

static void pass_unlink(http_pass_t *x) {
  if (x->prev) x->prev->next = x->next; else pass.active = x->next;
  if (x->next) x->next->prev = x->prev;
  x->prev = NULL;
  x->next = pass.spare;
  pass.spare = x;
}

static http_pass_t *pass_of(http_conn_t *c) {
  for (http_pass_t *x = pass.active; x; x = x->next)
    if (x->c == c) return x;
  return NULL;
}

/* Takes an idle connection (the most recently used) or connects a new one. 0 or a UV_E* code. */
static int pass_acquire(http_pass_t *x) {
  pass_up_t *u = x->pool->first;
  if (u == NULL) {
    pass_timer(x, x->connect_ms);
    return pass_connect(x);
  }
  pass_unidle(u);
  uv_ref(&u->h.handle);
  u->x = x;
  x->up = u;
  x->reused = 1;
  pass_send(x);
  return 0;
}

/* Writes to the upstream; a failure ends the exchange (through pass_data). 1: over high water. */
static int pass_write(http_pass_t *x, const uv_buf_t *b, unsigned n) {
  int r = writeq_write(&x->up->q, b, n);
  if (r < 0) pass_data(x, NULL, r);
  return r;
}

/* The request head (and a whole body) go out; a body still arriving follows in pass_pump. */
static void pass_send(http_pass_t *x) {
  uv_buf_t b[2] = {uv_buf_init(x->head.data, (unsigned)x->head.len), uv_buf_init((char *)x->body, (unsigned)x->body_len)};
  pass_timer(x, x->read_ms);
  x->req_done = !x->streaming;
  if (pass_write(x, b, x->body_len ? 2 : 1) < 0) return;
  if (x->streaming) pass_pump(x);
}

/* Moves the client's body to the upstream while the upstream takes it. */
static void pass_pump(http_pass_t *x) {
  static const char *const why[] = {"client body: closed", "client body: timeout", "client body: too large"};
  while (!x->req_done && !x->up_full && x->up && x->c) {
    const char *d;
    size_t n;
    int r = http_conn_body_read(x->c, x->gen, 0, &d, &n), w = 0;
    x->wait_body = r == HTTP_BODY_WAIT;
    if (r == HTTP_BODY_WAIT) return;
    if (r < 0) {
      pass_end(x, why[r == UV_ETIMEDOUT ? 1 : r == UV_EMSGSIZE ? 2 : 0], 0);
      return;
    }
    char size[24];
    uv_buf_t b[3];
    unsigned nb = 0;
    if (r == HTTP_BODY_END) {
      x->req_done = 1;
      if (x->body_mode == HTTP_PASS_BODY_CHUNKED) b[nb++] = uv_buf_init("0\r\n\r\n", 5);
    } else if (x->body_mode == HTTP_PASS_BODY_CHUNKED) {
      b[nb++] = uv_buf_init(size, (unsigned)snprintf(size, sizeof size, "%zx\r\n", n));
      b[nb++] = uv_buf_init((char *)d, (unsigned)n);
      b[nb++] = uv_buf_init("\r\n", 2);
    } else {
      b[nb++] = uv_buf_init((char *)d, (unsigned)n);
    }
    if (nb) w = pass_write(x, b, nb);
    if (r == HTTP_BODY_PIECE && x->c) http_conn_body_taken(x->c);
    if (w < 0) return;
    x->up_full = w == 1;
    if (w == 1) pass_timer(x, x->send_ms);
  }
}

/* Whether a request may be sent twice (RFC 9110 9.2.2): only those are sent again on a fresh connection. */
static int pass_idempotent(const char *m) {
  static const char *const ok[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    if (strcmp(m, ok[i]) == 0) return 1;
  return 0;
}

int http_pass_start(http_conn_t *c, uint32_t gen, const http_pass_req_t *r, const char *body, size_t body_len,
                    const http_pass_upstream_t *up, void *arg, const char **why) {
  http_pass_t *x = pass_new();
  *why = "out of memory";
  if (x == NULL) return UV_ENOMEM;
  x->head.len = 0;
  if ((x->pool = pass_pool(up)) == NULL || http_pass_request_head(&x->head, r) != 0) {
    x->next = pass.spare; /* back on the free list */
    pass.spare = x;
    return UV_ENOMEM;
  }
  x->c = c;
  x->gen = gen;
  x->arg = arg;
  x->status = 0;
  x->up = NULL;
  x->body = body;
  x->body_len = body ? body_len : 0;
  x->body_mode = r->body;
  x->streaming = r->body != HTTP_PASS_BODY_NONE && body == NULL;
  x->req_done = x->headed = x->sent = x->retried = x->up_full = x->client_full = x->wait_body = x->got = x->busy = 0;
  x->is_head = strcmp(r->method, "HEAD") == 0;
  x->idempotent = pass_idempotent(r->method);
  x->is_unix = up->addr == NULL;
  if (x->is_unix) snprintf(x->path, sizeof x->path, "%s", up->path);
  else memcpy(&x->addr, up->addr, up->addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  x->connect_ms = up->connect_ms;
  x->send_ms = up->send_ms;
  x->read_ms = up->read_ms;
  x->max_body = up->max_body;
  x->tunnel_ms = up->tunnel_ms;
  x->upgrade = r->upgrade != NULL;
  httpc_parse_start(&x->p, x->is_head, x->max_body, 0);
  pass_link(x);
  x->starting = 1; /* a failure now is returned, not called back */
  x->werr = 0;
  x->start_err = NULL;
  int rc = pass_acquire(x);
  x->starting = 0;
  if (rc == 0) rc = x->werr;
  if (rc != 0 || x->start_err) {
    *why = x->start_err ? x->start_err : uv_strerror(rc);
    pass_timer(x, 0);
    if (x->up) pass_up_close(x->up, 0);
    x->up = NULL;
    x->c = NULL;
    pass_unlink(x);
    return rc ? rc : UV_ECANCELED;
  }
  return 0;
}

/* ---- the response ------------------------------------------------------------------------------ */

/* Hands the head and the body bytes of the last feed to the client. The head waits for the first body
 * byte or the end (an upstream that fails right after its head still gets its client a 502). 0, or
 * -1 when the client is gone (the exchange has ended). */
static int pass_respond(http_pass_t *x, int final) {
  size_t blen;
  const char *b = httpc_parse_body(&x->p, &blen);
  int r;
  if (!x->headed) {
    size_t hl;
    const char *h = http_parse_headers(&x->p.parse, &hl);
    x->headed = 1;
    x->status = http_parse_status(&x->p.parse);
    x->head.len = 0;
    if (http_pass_response_head(&x->head, h, hl, &x->clen) != 0) {
      pass_end(x, "out of memory", 0);
      return -1;
    }
  }
  if (!blen && !final) return 0;
  if (!x->sent)
    r = http_conn_respond(x->c, x->gen, x->status, x->head.data, x->head.len, b, blen, final, x->clen, 0);
  else
    r = http_conn_respond(x->c, x->gen, x->status, "", 0, b, blen, final, -1, 0);
  x->sent = 1;
  if (r < 0 || (x->c == NULL && !final)) {
    x->c = NULL;
    pass_end(x, "client closed", 0);
    return -1;
  }
  if (r == 0 && !final) {
    x->client_full = 1; /* stop reading the upstream until the client's queue drains */
    uv_read_stop(&x->up->h.stream);
    pass_timer(x, 0);
  }
  return 0;
}

/* The upstream switched protocols: to a request that asked for it, the client's connection becomes a
 * tunnel (http_pass_tunnel.c) and the exchange ends with status 101; else (or while draining) it
 * fails. rest: what the upstream sent after its head. */
static void pass_upgrade(http_pass_t *x, const char *rest, size_t n) {
  size_t hl;
  const char *h = http_parse_headers(&x->p.parse, &hl);
  pass_up_t *u = x->up;
  int sent = 0;
  if (!x->upgrade || pass.draining) {
    pass_end(x, x->upgrade ? "draining" : "upstream switched protocols", 0);
    return;
  }
  x->status = 101;
  x->up = NULL; /* the tunnel's from here on, whatever happens */
  const char *err = http_pass_tunnel_start(u, x->c, x->gen, h, hl, x->tunnel_ms, rest, n, &sent);
  x->sent = sent;
  pass_end(x, err, 0);
}

/* Feeds bytes from the upstream; DONE ends the exchange (a 1xx starts the parser again). */
static void pass_feed(http_pass_t *x, const char *data, size_t n) {
  char err[200];
  while (1) {
    size_t used;
    int r = httpc_parse_feed(&x->p, data, n, &used);
    if (r == HTTP_PARSE_ERROR) {
      pass_end(x, httpc_parse_error(&x->p, err, sizeof err), 0);
      return;
    }
    int status = x->p.headed ? http_parse_status(&x->p.parse) : 0;
    if (r == HTTP_PARSE_UPGRADE || (r == HTTP_PARSE_DONE && status == 101)) { /* never an interim answer */
      pass_upgrade(x, data + used, n - used);
      return;
    }
    if (r == HTTP_PARSE_DONE && status < 200) { /* an interim answer: the real one follows */
      httpc_parse_start(&x->p, x->is_head, x->max_body, 0);
      data += used;
      n -= used;
      if (n == 0) return;
      continue;
    }
    if (x->p.headed && !x->headed && status > 599) {
      snprintf(err, sizeof err, "malformed response: status %d", status);
      pass_end(x, err, 0);
      return;
    }
    if (x->p.headed && pass_respond(x, r == HTTP_PARSE_DONE) != 0) return;
    if (r == HTTP_PARSE_DONE)
      pass_end(x, NULL, used == n && x->req_done && http_parse_keep_alive(&x->p.parse));
    return;
  }
}

static int pass_stale(http_pass_t *x, ssize_t n) {
  return x->reused && x->idempotent && !x->got && !x->retried && !x->streaming && !x->sent &&
         (n == UV_EOF || n == UV_ECONNRESET || n == UV_EPIPE);
}

/* Bytes (n > 0) or an error (n < 0: UV_EOF, a failed write or connect, UV_ETIMEDOUT) for x. */
static void pass_data(http_pass_t *x, const char *data, ssize_t n) {
  if (n > 0) {
    x->got = 1;
    if (!x->client_full) pass_timer(x, x->read_ms);
    x->busy = 1;
    pass_feed(x, data, (size_t)n);
    x->busy = 0;
    return;
  }
  if (x->starting) { /* a write failed during start: http_pass_start returns it */
    x->werr = (int)n;
    return;
  }
  if (pass_stale(x, n)) { /* a pooled connection the upstream had closed: once more on a fresh one */
    pass_up_close(x->up, 0);
    x->up = NULL;
    x->retried = 1;
    int r = pass_connect(x);
    pass_timer(x, x->connect_ms);
    if (r != 0) pass_end(x, uv_strerror(r), 0);
    return;
  }
  if (n == UV_EOF && x->p.headed && httpc_parse_finish(&x->p) == HTTP_PARSE_DONE) {
    x->busy = 1;
    if (pass_respond(x, 1) == 0) pass_end(x, NULL, 0);
    return;
  }
  pass_end(x, n == UV_ETIMEDOUT ? "timeout" : n == UV_EOF ? "closed" : uv_strerror((int)n), 0);
}

/* The exchange is over: its connection pooled or closed, the client's connection cut when a failure
 * came after the response had begun, the owner told (after x is free: it may start another). */
static void pass_end(http_pass_t *x, const char *err, int reusable) {
  if (x->starting) { /* (a client body that failed at once): http_pass_start returns err */
    x->start_err = err ? err : "closed";
    if (x->up) pass_up_close(x->up, 0);
    x->up = NULL;
    return;
  }
  int status = x->status, sent = x->sent;
  void *arg = x->arg;
  pass_timer(x, 0);
  if (x->up) {
    if (reusable && !x->client_full) pass_up_put(x->up);
    else pass_up_close(x->up, 0);
    x->up = NULL;
  }
  if (err && sent && x->c) http_conn_abort(x->c, x->gen);
  x->c = NULL;
  x->busy = 0;
  pass_unlink(x);
  pass.done(arg, err ? 0 : status, err, sent);
}

/* ---- hooks from the server's callbacks --------------------------------------------------------- */

int http_pass_on_drain(http_conn_t *c) {
  http_pass_t *x = pass_of(c);
  if (x == NULL || !x->client_full) return x != NULL;
  x->client_full = 0;
  pass_timer(x, x->read_ms);
  if (net_connect_read(&x->up->h, pass_read) != 0) pass_end(x, "closed", 0);
  return 1;
}

int http_pass_on_body(http_conn_t *c) {
  http_pass_t *x = pass_of(c);
  if (x == NULL) return 0;
  if (x->wait_body) pass_pump(x);
  return 1;
}

void http_pass_drain(void) {
  pass.draining = 1;
  http_pass_tunnel_close_all();
}

void http_pass_on_conn_closed(http_conn_t *c) {
  http_pass_t *x = pass_of(c);
  if (x == NULL) return;
  x->c = NULL;
  if (!x->busy) pass_end(x, "client closed", 0);
}
