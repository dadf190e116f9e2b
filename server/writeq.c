/* writeq.c -- writing to a libuv stream without waiting: to the socket now, or a copy queued.
 *
 * HTTP responses and mesh messages are written the same way: uv_try_write when nothing is queued
 * ahead (the common case: no copy, no allocation), and only the part the kernel did not take is
 * copied into one allocation with its uv_write_t. */
#include "writeq.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct {
  uv_write_t req;
  char data[];
} writeq_req_t;

int mf_writeq(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb) {
  size_t total = 0, done = 0;
  for (unsigned i = 0; i < n; i++) total += bufs[i].len;
  if (total == 0) return 0;
  if (uv_stream_get_write_queue_size(s) == 0) {
    int r = uv_try_write(s, bufs, n);
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
  if (r != 0) free(w);
  return r;
}

void mf_writeq_done(uv_write_t *req) { free(mf_container_of(req, writeq_req_t, req)); }
