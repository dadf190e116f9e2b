/* net_connect.c -- an outbound libuv stream, TCP or Unix-domain: set up, connect, read into one buffer.
 *
 * Every outbound connection of a worker (moonfork.socket's net_tcp.c, Redis's net_redis.c, the upstreams
 * of http_pass.c) is the same libuv stream underneath: a TCP handle given an address or a pipe given a
 * path, Nagle off once connected, reads into a buffer its owner consumes inside the read callback.
 * That part lives here once; what the bytes mean, timeouts and closing stay with each owner. Because
 * libuv calls one stream's read callback at a time and each owner copies or parses what it got before
 * returning, one 64 KiB buffer serves them all. */
#include "net_connect.h"

#define NET_CONNECT_READ_BUF 65536

static char net_connect_buf[NET_CONNECT_READ_BUF];

int net_connect_init(uv_loop_t *loop, net_connect_stream_t *s, int is_unix, void *data) {
  int r = is_unix ? uv_pipe_init(loop, &s->pipe, 0) : uv_tcp_init(loop, &s->tcp);
  if (r == 0) s->handle.data = data;
  return r;
}

int net_connect_start(net_connect_stream_t *s, uv_connect_t *req, const struct sockaddr *addr, const char *path,
                      uv_connect_cb cb, void *data) {
  req->data = data;
  if (addr) return uv_tcp_connect(req, &s->tcp, addr, cb);
  uv_pipe_connect(req, &s->pipe, path, cb);
  return 0;
}

void net_connect_ready(net_connect_stream_t *s) {
  if (s->handle.type == UV_TCP) uv_tcp_nodelay(&s->tcp, 1);
}

static void net_connect_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  *buf = uv_buf_init(net_connect_buf, sizeof net_connect_buf);
}

int net_connect_read(net_connect_stream_t *s, uv_read_cb cb) {
  int r = uv_read_start(&s->stream, net_connect_alloc, cb);
  return r == UV_EALREADY ? 0 : r;
}
