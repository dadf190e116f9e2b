/* net_tcp.c -- outbound stream sockets for scripts: resolve, connect, read, write, close.
 *
 * A socket is one libuv stream (TCP or Unix-domain) and its send queue (writeq, with a high-water mark
 * of 0, so every queued write reports when the queue is empty again: a sender waits for that). The owner
 * (bind_tcp.c) decides everything else: timeouts, retries on the next address, pooling. C never closes
 * a socket on its own; it reports, and the owner closes. After net_tcp_close no callback runs, even the
 * ones libuv still calls with UV_ECANCELED (a pending connect, queued writes): `closed` tells them. Reads
 * land in the worker's one read buffer (net_connect.c), because the owner copies each piece out before
 * the next can arrive. */
#include "net_tcp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "net_connect.h"
#include "net_tls.h"
#include "util.h"
#include "writeq.h"

struct net_tcp_s {
  net_connect_stream_t h;
  uv_connect_t connect_req;
  writeq_t q;
  net_tls_t *tls; /* after net_tcp_tls: what is read and written goes through it */
  int user_ref;
  unsigned closed : 1;
};

static struct {
  uv_loop_t *loop;
  const net_tcp_callbacks_t *cb;
} net_tcp;

void net_tcp_init(uv_loop_t *loop, const net_tcp_callbacks_t *cb) {
  net_tcp.loop = loop;
  net_tcp.cb = cb;
}

static void net_tcp_drained(writeq_t *q) {
  net_tcp_t *s = mf_container_of(q, net_tcp_t, q);
  if (!s->closed) net_tcp.cb->on_sent(s, 0);
}

static void net_tcp_write_failed(writeq_t *q, int status) {
  net_tcp_t *s = mf_container_of(q, net_tcp_t, q);
  if (!s->closed) net_tcp.cb->on_sent(s, status);
}

net_tcp_t *net_tcp_new(int is_unix) {
  net_tcp_t *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  if (net_connect_init(net_tcp.loop, &s->h, is_unix, s) != 0) {
    free(s);
    return NULL;
  }
  s->user_ref = MF_NO_REF;
  writeq_init(&s->q, &s->h.stream, 0, net_tcp_drained, net_tcp_write_failed);
  return s;
}

static void net_tcp_connected(uv_connect_t *req, int status) {
  net_tcp_t *s = req->data;
  if (s->closed) return;
  if (status == 0) net_connect_ready(&s->h);
  net_tcp.cb->on_connect(s, status);
}

int net_tcp_connect(net_tcp_t *s, const struct sockaddr *addr) {
  return net_connect_start(&s->h, &s->connect_req, addr, NULL, net_tcp_connected, s);
}

int net_tcp_connect_unix(net_tcp_t *s, const char *path) {
  return net_connect_start(&s->h, &s->connect_req, NULL, path, net_tcp_connected, s);
}

static void net_tcp_on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf) {
  net_tcp_t *s = stream->data;
  if (n == 0 || s->closed) return;
  if (n < 0) uv_read_stop(stream); /* the owner closes; no more reads meanwhile */
  if (s->tls && n > 0)
    net_tls_feed(s->tls, buf->base, (size_t)n);
  else
    net_tcp.cb->on_read(s, buf->base, n);
}

int net_tcp_read(net_tcp_t *s, int on) {
  if (!on) return uv_read_stop(&s->h.stream);
  return net_connect_read(&s->h, net_tcp_on_read);
}

int net_tcp_write(net_tcp_t *s, const uv_buf_t *bufs, unsigned n) {
  if (s->tls) return net_tls_write(s->tls, bufs, n);
  return writeq_write(&s->q, bufs, n);
}

static int net_tcp_send_raw(void *owner, const char *p, size_t n) {
  net_tcp_t *s = owner;
  if (s->closed) return UV_ECANCELED;
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  return writeq_write(&s->q, &b, 1);
}

static void net_tcp_plain(void *owner, const char *p, ssize_t n) {
  net_tcp_t *s = owner;
  if (!s->closed) net_tcp.cb->on_read(s, p, n);
}

static void net_tcp_handshake(void *owner, const char *err) {
  net_tcp_t *s = owner;
  if (!s->closed) net_tcp.cb->on_handshake(s, err);
}

int net_tcp_tls(net_tcp_t *s, const char *server_name, int verify, net_tls_session_t *reuse) {
  static const net_tls_io_t io = {net_tcp_send_raw, net_tcp_plain, net_tcp_handshake};
  if (s->tls) return UV_EALREADY;
  s->tls = net_tls_new(server_name, verify, reuse, &io, s);
  if (s->tls == NULL) return net_tls_error() ? UV_ENOSYS : UV_ENOMEM;
  int r = net_tcp_read(s, 1);
  return r != 0 ? r : net_tls_start(s->tls);
}

net_tls_t *net_tcp_tls_of(net_tcp_t *s) { return s->tls; }

int net_tcp_alive(net_tcp_t *s) {
  uv_os_fd_t fd;
  char c;
  if (s->closed || uv_fileno(&s->h.handle, &fd) != 0) return 0;
  ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  if (r > 0 && s->tls) return 1; /* TLS records (a session ticket) need not be data */
  return 0; /* 0: the peer closed; > 0: it spoke out of turn. Either way not reusable */
}

void net_tcp_keep_loop(net_tcp_t *s, int on) {
  if (on)
    uv_ref(&s->h.handle);
  else
    uv_unref(&s->h.handle);
}

static void net_tcp_freed(uv_handle_t *handle) {
  net_tcp_t *s = handle->data;
  net_tls_free(s->tls);
  free(s);
}

void net_tcp_close(net_tcp_t *s) {
  if (s->closed) return;
  if (s->tls) net_tls_close_notify(s->tls); /* while send_raw still writes */
  s->closed = 1;
  uv_close(&s->h.handle, net_tcp_freed);
}

int *net_tcp_user_ref(net_tcp_t *s) { return &s->user_ref; }

typedef struct {
  uv_getaddrinfo_t req;
  net_tcp_resolve_cb cb;
  void *data;
} net_tcp_resolve_t;

static void net_tcp_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai) {
  net_tcp_resolve_t *r = mf_container_of(req, net_tcp_resolve_t, req);
  r->cb(r->data, status, status == 0 ? ai : NULL);
  if (ai) uv_freeaddrinfo(ai);
  free(r);
}

int net_tcp_resolve(const char *host, net_tcp_resolve_cb cb, void *data) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  net_tcp_resolve_t *r = malloc(sizeof *r);
  if (r == NULL) return UV_ENOMEM;
  r->cb = cb;
  r->data = data;
  int rc = uv_getaddrinfo(net_tcp.loop, &r->req, net_tcp_resolved, host, NULL, &hints);
  if (rc != 0) free(r);
  return rc;
}
