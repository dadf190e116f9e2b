/* mesh.c -- the worker mesh: one Unix-domain stream per pair of live workers, framed messages.
 *
 * The master makes a socketpair for each pair of ready workers and hands one end to each over the
 * control channel; messages then go straight from worker to worker. Each message is a 4-byte big-endian
 * length and that many bytes. Whole frames found in a read are delivered straight from the shared read
 * buffer; only a partial frame is copied aside, into a buffer sized for it once its length is known.
 * Writes go to the socket at once when nothing is queued; what the kernel does not take is copied and
 * queued. A peer that stops reading makes writes say "slow down" past MESH_HIGH_WATER and is dropped
 * at MESH_HARD_LIMIT, so a stuck worker cannot make the others' memory grow without bound. */
#include "mesh.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"
#include "writeq.h"

struct mesh_peer_s {
  uv_pipe_t *pipe;
  int id;
  long serial;
  int closing;
  int above_high_water;
  int user_ref;
  mf_buf_t in; /* a partial frame */
  mesh_peer_t *prev, *next;
};

static struct {
  uv_loop_t *loop;
  mesh_callbacks_t cb;
  void *data;
  mesh_peer_t *peers;
  char readbuf[64 * 1024];
} MS;

static uint32_t frame_len(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

void mesh_init(uv_loop_t *loop, const mesh_callbacks_t *cb, void *data) {
  MS.loop = loop;
  MS.cb = *cb;
  MS.data = data;
}

int mesh_peer_id(const mesh_peer_t *p) { return p->id; }
long mesh_peer_serial(const mesh_peer_t *p) { return p->serial; }
int *mesh_peer_user_ref(mesh_peer_t *p) { return &p->user_ref; }

static void on_pipe_closed(uv_handle_t *h) {
  mesh_peer_t *p = h->data;
  if (MS.cb.on_closed) MS.cb.on_closed(MS.data, p);
  if (p->prev) p->prev->next = p->next;
  else MS.peers = p->next;
  if (p->next) p->next->prev = p->prev;
  mf_buf_free(&p->in);
  free(p->pipe);
  free(p);
}

void mesh_peer_close(mesh_peer_t *p) {
  if (p->closing) return;
  p->closing = 1;
  uv_close((uv_handle_t *)p->pipe, on_pipe_closed);
}

void mesh_close_all(void) {
  for (mesh_peer_t *p = MS.peers; p != NULL; p = p->next) mesh_peer_close(p);
}

static size_t queued(const mesh_peer_t *p) { return uv_stream_get_write_queue_size((uv_stream_t *)p->pipe); }

static void on_write(uv_write_t *req, int status) {
  mesh_peer_t *p = req->handle->data;
  mf_writeq_done(req);
  if (status < 0) {
    if (status != UV_ECANCELED) mesh_peer_close(p);
    return;
  }
  if (p->above_high_water && queued(p) < MESH_HIGH_WATER / 2) {
    p->above_high_water = 0;
    if (MS.cb.on_drain && !p->closing) MS.cb.on_drain(MS.data, p);
  }
}

int mesh_peer_write(mesh_peer_t *p, const char *msg, size_t len) {
  if (p == NULL || p->closing) return -1;
  if (len > MESH_MAX_MESSAGE) return -2;
  if (queued(p) + len + 4 > MESH_HARD_LIMIT) {
    mf_log("mesh: worker %d is not reading (over %u MiB queued): closing its stream", p->id,
           MESH_HARD_LIMIT >> 20);
    mesh_peer_close(p);
    return -1;
  }
  unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                          (unsigned char)len};
  uv_buf_t bufs[2] = {uv_buf_init((char *)hdr, 4), uv_buf_init((char *)msg, (unsigned)len)};
  if (mf_writeq((uv_stream_t *)p->pipe, bufs, 2, on_write) != 0) {
    mesh_peer_close(p);
    return -1;
  }
  if (queued(p) > MESH_HIGH_WATER) {
    p->above_high_water = 1;
    return 0;
  }
  return 1;
}

/* Delivers the whole frames in data; keeps a trailing partial frame in p->in. Returns -1 on a bad frame. */
static int deliver(mesh_peer_t *p, const char *data, size_t len) {
  while (len >= 4 && !p->closing) {
    uint32_t n = frame_len(data);
    if (n > MESH_MAX_MESSAGE) return -1;
    if (len - 4 < n) break;
    MS.cb.on_message(MS.data, p, data + 4, n);
    data += 4 + n;
    len -= 4 + n;
  }
  if (len > 0 && !p->closing) {
    size_t want = len >= 4 ? 4 + (size_t)frame_len(data) : 4;
    if (mf_buf_reserve(&p->in, want) != 0 || mf_buf_append(&p->in, data, len) != 0) return -1;
  }
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  mesh_peer_t *p = h->data;
  /* Mid-frame with a known length: read straight into the frame's buffer. */
  if (p->in.len >= 4) {
    size_t want = 4 + (size_t)frame_len(p->in.data);
    if (want > p->in.len && p->in.cap >= want) {
      *buf = uv_buf_init(p->in.data + p->in.len, (unsigned)(want - p->in.len));
      return;
    }
  }
  *buf = uv_buf_init(MS.readbuf, sizeof MS.readbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mesh_peer_t *p = s->data;
  if (n < 0) {
    mesh_peer_close(p);
    return;
  }
  if (n == 0 || p->closing) return;
  int bad = 0;
  if (buf->base != MS.readbuf) {
    /* read into p->in directly */
    p->in.len += (size_t)n;
    size_t want = 4 + (size_t)frame_len(p->in.data);
    if (p->in.len == want) {
      mf_buf_t whole = p->in;
      mf_buf_init(&p->in);
      MS.cb.on_message(MS.data, p, whole.data + 4, want - 4);
      mf_buf_free(&whole);
    }
  } else if (p->in.len == 0) {
    bad = deliver(p, buf->base, (size_t)n);
  } else {
    /* complete the pending frame (header first if even that was split) */
    const char *d = buf->base;
    size_t len = (size_t)n;
    if (p->in.len < 4) {
      size_t take = 4 - p->in.len < len ? 4 - p->in.len : len;
      mf_buf_append(&p->in, d, take);
      d += take;
      len -= take;
      if (p->in.len < 4) return;
      if (frame_len(p->in.data) > MESH_MAX_MESSAGE || mf_buf_reserve(&p->in, frame_len(p->in.data)) != 0) bad = 1;
    }
    if (!bad) {
      size_t want = 4 + (size_t)frame_len(p->in.data);
      size_t take = want - p->in.len < len ? want - p->in.len : len;
      mf_buf_append(&p->in, d, take);
      d += take;
      len -= take;
      if (p->in.len == want) {
        mf_buf_t whole = p->in;
        mf_buf_init(&p->in);
        MS.cb.on_message(MS.data, p, whole.data + 4, want - 4);
        mf_buf_free(&whole);
        if (len > 0) bad = deliver(p, d, len);
      }
    }
  }
  if (bad) {
    mf_log("mesh: bad frame from worker %d: closing its stream", p->id);
    mesh_peer_close(p);
  }
}

void mesh_add_peer(uv_pipe_t *pipe, int id, long serial) {
  mesh_peer_t *p = calloc(1, sizeof *p);
  if (p == NULL) {
    uv_close((uv_handle_t *)pipe, (uv_close_cb)free);
    return;
  }
  p->pipe = pipe;
  p->id = id;
  p->serial = serial;
  pipe->data = p;
  p->next = MS.peers;
  if (MS.peers) MS.peers->prev = p;
  MS.peers = p;
  uv_read_start((uv_stream_t *)pipe, on_alloc, on_read);
  if (MS.cb.on_peer) MS.cb.on_peer(MS.data, p);
}
