/* net_redis.c -- a connection to a Redis server: connect, batched writes, replies decoded as they come.
 *
 * Why our own stream over hiredis's reader, rather than hiredis's async context and its libuv adapter:
 * hiredis 0.14's async context has no timeouts, allocates a redisReply tree per reply that we would
 * then copy into Lua, and owns the socket's lifetime (its disconnect callbacks fire from inside its own
 * calls), which makes "close from Lua at any moment" delicate. A plain libuv stream (TCP or Unix) with
 * hiredis's RESP reader building Lua values directly (redis_resp.c) is smaller, allocates less, and
 * its lifetime follows the binding kit's rules like every other outbound socket here.
 *
 * Writes are batched: net_redis_send appends to an output buffer and arms a prepare handle; just
 * before the loop polls, the buffer is handed whole to one uv_write (libuv tries it at once), so the
 * commands of every coroutine that ran this turn go out in one system call, pipelined. One write is in
 * flight at a time; what is queued meanwhile goes when it completes. C never closes a connection on its
 * own: it reports, and the owner (bind_redis.c) closes. */
#include "net_redis.h"

#include <stdlib.h>
#include <string.h>

#include "net_connect.h"
#include "util.h"

struct net_redis_s {
  net_connect_stream_t h;
  uv_prepare_t flush;
  uv_connect_t connect_req;
  uv_write_t write_req;
  redis_resp_t *reader;
  char *out;          /* queued bytes, not yet handed to libuv */
  size_t len, cap;
  char *inflight;     /* the buffer of the write in flight (NULL: none) */
  int user_ref;
  int handles;        /* open libuv handles: freed when the last one is closed */
  unsigned connected : 1;
  unsigned closed : 1;
};

static struct {
  uv_loop_t *loop;
  const net_redis_callbacks_t *cb;
} net_redis;

void net_redis_init(uv_loop_t *loop, const net_redis_callbacks_t *cb) {
  net_redis.loop = loop;
  net_redis.cb = cb;
}

net_redis_t *net_redis_new(int is_unix) {
  net_redis_t *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->reader = redis_resp_new();
  if (c->reader == NULL) goto fail_reader;
  if (net_connect_init(net_redis.loop, &c->h, is_unix, c) != 0) goto fail_stream;
  uv_prepare_init(net_redis.loop, &c->flush);
  c->flush.data = c;
  c->handles = 2;
  c->user_ref = MF_NO_REF;
  return c;
fail_stream:
  redis_resp_free(NULL, c->reader);
fail_reader:
  free(c);
  return NULL;
}

static void net_redis_on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf) {
  net_redis_t *c = stream->data;
  if (n == 0 || c->closed) return;
  if (n < 0) {
    uv_read_stop(stream); /* the owner closes; no more reads meanwhile */
  } else if (redis_resp_feed(c->reader, buf->base, (size_t)n) != 0) {
    uv_read_stop(stream);
    n = UV_EMSGSIZE; /* a reply past the bound, or no memory for it */
  }
  net_redis.cb->on_data(c, n);
}

static void net_redis_on_prepare(uv_prepare_t *p);

static void net_redis_connected(uv_connect_t *req, int status) {
  net_redis_t *c = req->data;
  if (c->closed) return;
  if (status == 0) {
    net_connect_ready(&c->h);
    status = net_connect_read(&c->h, net_redis_on_read);
  }
  if (status == 0) {
    c->connected = 1;
    if (c->len) uv_prepare_start(&c->flush, net_redis_on_prepare); /* commands queued while connecting */
  }
  net_redis.cb->on_connect(c, status);
}

int net_redis_connect(net_redis_t *c, const struct sockaddr *addr) {
  return net_connect_start(&c->h, &c->connect_req, addr, NULL, net_redis_connected, c);
}

int net_redis_connect_unix(net_redis_t *c, const char *path) {
  return net_connect_start(&c->h, &c->connect_req, NULL, path, net_redis_connected, c);
}

static void net_redis_flush(net_redis_t *c);

static void net_redis_written(uv_write_t *req, int status) {
  net_redis_t *c = req->data;
  free(c->inflight);
  c->inflight = NULL;
  if (c->closed) return;
  if (status < 0) {
    net_redis.cb->on_error(c, status);
    return;
  }
  if (c->len) net_redis_flush(c);
}

/* Hands the queued bytes to libuv as one write (unless one is in flight: then at its end). */
static void net_redis_flush(net_redis_t *c) {
  if (c->closed || !c->connected || c->inflight || c->len == 0) return;
  uv_buf_t b = uv_buf_init(c->out, (unsigned)c->len);
  c->inflight = c->out;
  c->out = NULL;
  c->len = c->cap = 0;
  c->write_req.data = c;
  int r = uv_write(&c->write_req, &c->h.stream, &b, 1, net_redis_written);
  if (r < 0) {
    free(c->inflight);
    c->inflight = NULL;
    net_redis.cb->on_error(c, r);
  }
}

static void net_redis_on_prepare(uv_prepare_t *p) {
  net_redis_t *c = p->data;
  uv_prepare_stop(p);
  net_redis_flush(c);
}

int net_redis_send(net_redis_t *c, const char *data, size_t len) {
  if (c->len + len > c->cap) {
    size_t cap = c->cap ? c->cap : 256;
    while (cap < c->len + len) cap *= 2;
    char *out = realloc(c->out, cap);
    if (out == NULL) return UV_ENOMEM;
    c->out = out;
    c->cap = cap;
  }
  memcpy(c->out + c->len, data, len);
  c->len += len;
  if (c->connected && !c->inflight) uv_prepare_start(&c->flush, net_redis_on_prepare);
  return 0;
}

redis_resp_t *net_redis_reader(net_redis_t *c) { return c->reader; }

static void net_redis_freed(uv_handle_t *handle) {
  net_redis_t *c = handle->data;
  if (--c->handles > 0) return;
  redis_resp_free(NULL, c->reader);
  free(c->out);
  free(c);
}

void net_redis_close(net_redis_t *c, lua_State *L) {
  if (c->closed) return;
  c->closed = 1;
  redis_resp_free(L, c->reader); /* the owner may be inside a reply loop: it checks net_redis_open */
  c->reader = NULL;
  uv_close(&c->h.handle, net_redis_freed);
  uv_close((uv_handle_t *)&c->flush, net_redis_freed);
}

int *net_redis_user_ref(net_redis_t *c) { return &c->user_ref; }

int net_redis_open(net_redis_t *c) { return !c->closed; }
