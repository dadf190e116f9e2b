/* writeq.c -- writing to a libuv stream without waiting: to the socket now, or a copy queued.
 *
 * HTTP responses and mesh messages are written the same way: straight to the socket when nothing is
 * queued ahead (the common case: no allocation), and only the part the kernel did not take is copied
 * into one allocation with its uv_write_t. The backpressure rule (a high-water mark, "drain" once the
 * queue is back under half of it) is written here once, for every owner of a stream. */
#include "writeq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"

typedef struct {
  uv_write_t req;
  char data[];
} writeq_req_t;

#define WRITEQ_GATHER 16384 /* pieces up to this much in all are copied together for one send() */

/* Writes what the socket takes now, without blocking. A response is usually a head and a body: they
 * are copied into one piece and sent with send(2), which costs the kernel less than writev(2) of two
 * (no iovec to import, no pass through the file layer). Anything else goes through uv_try_write. */
static int try_send(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, size_t total) {
  uv_os_fd_t fd;
  if (total <= WRITEQ_GATHER && uv_fileno((uv_handle_t *)s, &fd) == 0) {
    char one[WRITEQ_GATHER];
    const char *p = bufs[0].base;
    if (n > 1) {
      size_t len = 0;
      for (unsigned i = 0; i < n; i++) {
        memcpy(one + len, bufs[i].base, bufs[i].len);
        len += bufs[i].len;
      }
      p = one;
    }
    for (;;) {
      ssize_t r = send(fd, p, total, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r >= 0) return (int)r;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return UV_EAGAIN;
      if (errno == ENOTSOCK) break; /* not a socket: libuv knows what to do */
      return uv_translate_sys_error(errno);
    }
  }
  return uv_try_write(s, bufs, n);
}

/* mf_writeq, telling the caller the request it queued (*queued stays NULL when all went at once) and
 * how many bytes it holds. */
static int writeq_queue(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb, writeq_req_t **queued,
                        size_t *queued_len) {
  size_t total = 0, done = 0;
  for (unsigned i = 0; i < n; i++) total += bufs[i].len;
  if (total == 0) return 0;
  if (uv_stream_get_write_queue_size(s) == 0) {
    int r = try_send(s, bufs, n, total);
    if (r >= 0) done = (size_t)r;
    else if (r != UV_EAGAIN) return r;
    if (done == total) return 0;
  }
  writeq_req_t *w = malloc(sizeof *w + (total - done));
  if (w == NULL) return UV_ENOMEM;
  size_t len = 0;
  for (unsigned i = 0; i < n; i++) {
    size_t skip = done > bufs[i].len ? bufs[i].len : done;
    done -= skip;
    memcpy(w->data + len, bufs[i].base + skip, bufs[i].len - skip);
    len += bufs[i].len - skip;
  }
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  int r = uv_write(&w->req, s, &b, 1, cb);
  if (r != 0) {
    free(w);
    return r;
  }
  *queued = w;
  *queued_len = len;
  return 0;
}

int mf_writeq(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb) {
  writeq_req_t *w = NULL;
  size_t len;
  return writeq_queue(s, bufs, n, cb, &w, &len);
}

void mf_writeq_done(uv_write_t *req) { free(mf_container_of(req, writeq_req_t, req)); }

static void writeq_on_write(uv_write_t *req, int status) {
  writeq_t *q = req->data;
  mf_writeq_done(req);
  if (q == NULL || status == UV_ECANCELED) return; /* (its owner failed to make it / is closing) */
  q->reqs--;
  if (status < 0) {
    if (q->on_error) q->on_error(q, status);
    return;
  }
  if (q->above && writeq_size(q) <= q->high_water / 2) {
    q->above = 0;
    if (q->on_drain) q->on_drain(q);
  }
  /* after on_drain, which may write again */
  if (q->on_empty && q->reqs == 0 && writeq_size(q) == 0) q->on_empty(q);
}

void writeq_init(writeq_t *q, uv_stream_t *stream, size_t high_water, writeq_drain_cb on_drain,
                 writeq_error_cb on_error) {
  q->stream = stream;
  q->high_water = high_water;
  q->on_drain = on_drain;
  q->on_error = on_error;
  q->on_empty = NULL;
  q->queued = 0;
  q->reqs = 0;
  q->above = 0;
}

/* The request w (len bytes) was queued for q. Returns as writeq_write. */
static int writeq_took(writeq_t *q, writeq_req_t *w, size_t len) {
  w->req.data = q;
  q->reqs++;
  q->queued += len;
  if (writeq_size(q) > q->high_water) {
    q->above = 1;
    return 1;
  }
  return 0;
}

int writeq_write_lazy(writeq_t **qp, uv_stream_t *s, const uv_buf_t *bufs, unsigned n,
                      writeq_t *(*make)(void *owner), void *owner) {
  if (*qp != NULL) return writeq_write(*qp, bufs, n);
  writeq_req_t *w = NULL;
  size_t len = 0;
  int r = writeq_queue(s, bufs, n, writeq_on_write, &w, &len);
  if (r != 0 || w == NULL) return r;
  writeq_t *q = *qp = make(owner);
  if (q == NULL) {
    w->req.data = NULL; /* its callback just frees it */
    return UV_ENOMEM;
  }
  return writeq_took(q, w, len);
}

int writeq_write(writeq_t *q, const uv_buf_t *bufs, unsigned n) {
  writeq_req_t *w = NULL;
  size_t len = 0;
  int r = writeq_queue(q->stream, bufs, n, writeq_on_write, &w, &len);
  if (r != 0) return r;
  if (w == NULL) return 0; /* all went at once: nothing queued, so nothing over high water either */
  return writeq_took(q, w, len);
}
