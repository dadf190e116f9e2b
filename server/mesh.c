/* mesh.c -- the worker mesh: one Unix-domain stream per pair of live workers, framed messages.
 *
 * The master makes a socketpair for each pair of ready workers and hands one end to each over the
 * control channel; messages then go straight from worker to worker. Each message is a 4-byte big-endian
 * length and that many bytes (mesh_frame.c). Whole frames found in a read are delivered straight from the shared read
 * buffer; only a partial frame is copied aside, into a buffer sized for it once its length is known.
 * Writes go to the socket at once when nothing is queued; what the kernel does not take is copied and
 * queued (writeq.c, which also says "slow down" past MESH_HIGH_WATER). A peer that stops reading is
 * dropped at MESH_HARD_LIMIT, so a stuck worker cannot make the others' memory grow without bound;
 * the dropping side then asks the master for a new pair (mesh_set_repair), and a stream that arrives
 * for a worker whose old stream has not ended yet waits for that end, so Lua always sees the old
 * stream's "close" before the new one's "node" (a respawn's too: its predecessor's stream is at EOF).
 * But a replacement whose predecessor still lives (a reload: it drains) is a peer of its own at once,
 * told apart by its spawn serial: held behind a live stream it would stay unread until that worker
 * exited, and a worker waiting for its answer (the chat's new leader) would wait as long. */
#define _GNU_SOURCE /* POLLRDHUP */
#include "mesh.h"

#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mesh_frame.h"
#include "util.h"
#include "writeq.h"

struct mesh_peer_s {
  uv_pipe_t *pipe;
  writeq_t wq;
  int id;
  long serial;
  int closing;
  int user_ref;
  mf_buf_t in; /* a partial frame */
  mesh_peer_t *prev, *next;
  uv_pipe_t *successor; /* a newer stream to the same worker, added once this one has closed */
  long successor_serial;
};

static struct {
  mesh_callbacks_t cb;
  void *data;
  mesh_repair_cb repair;
  mesh_peer_t *peers;
  char readbuf[64 * 1024];
} mesh;

void mesh_init(uv_loop_t *loop, const mesh_callbacks_t *cb, void *data) {
  (void)loop; /* the peers' pipes come open on it (kept in the signature for worker.c) */
  mesh.cb = *cb;
  mesh.data = data;
}

void mesh_set_repair(mesh_repair_cb repair) { mesh.repair = repair; }

int mesh_peer_id(const mesh_peer_t *p) { return p->id; }
long mesh_peer_serial(const mesh_peer_t *p) { return p->serial; }
int *mesh_peer_user_ref(mesh_peer_t *p) { return &p->user_ref; }

static void on_pipe_closed(uv_handle_t *h) {
  mesh_peer_t *p = h->data;
  if (mesh.cb.on_closed) mesh.cb.on_closed(mesh.data, p);
  if (p->prev) p->prev->next = p->next;
  else mesh.peers = p->next;
  if (p->next) p->next->prev = p->prev;
  uv_pipe_t *next = p->successor;
  int id = p->id;
  long serial = p->successor_serial;
  mf_buf_free(&p->in);
  free(p->pipe);
  free(p);
  if (next) mesh_add_peer(next, id, serial); /* "close" for the old stream came first, then "node" */
}

void mesh_peer_close(mesh_peer_t *p) {
  if (p->closing) return;
  p->closing = 1;
  uv_close((uv_handle_t *)p->pipe, on_pipe_closed);
}

static void on_write_error(writeq_t *q, int status) {
  (void)status;
  mesh_peer_close(mf_container_of(q, mesh_peer_t, wq));
}

static void on_write_drain(writeq_t *q) {
  mesh_peer_t *p = mf_container_of(q, mesh_peer_t, wq);
  if (mesh.cb.on_drain && !p->closing) mesh.cb.on_drain(mesh.data, p);
}

int mesh_peer_write(mesh_peer_t *p, const char *msg, size_t len) {
  if (p == NULL || p->closing) return UV_EPIPE;
  if (len > MESH_MAX_MESSAGE) return UV_EMSGSIZE;
  if (writeq_size(&p->wq) + len + MESH_FRAME_HEAD > MESH_HARD_LIMIT) {
    mf_log("mesh: worker %d is not reading (over %u MiB queued): closing its stream", p->id,
           MESH_HARD_LIMIT >> 20);
    mesh_peer_close(p);
    if (mesh.repair) mesh.repair(p->id, p->serial); /* both still live: the master makes a new pair */
    return UV_EPIPE;
  }
  unsigned char hdr[MESH_FRAME_HEAD];
  mesh_frame_encode(hdr, (uint32_t)len);
  uv_buf_t bufs[2] = {uv_buf_init((char *)hdr, MESH_FRAME_HEAD), uv_buf_init((char *)msg, (unsigned)len)};
  int r = writeq_write(&p->wq, bufs, 2);
  if (r < 0) {
    mesh_peer_close(p);
    return UV_EPIPE;
  }
  return r == 0; /* 1: sent; 0: sent, but over high water */
}

static int on_frame(void *arg, const char *msg, size_t len) {
  mesh_peer_t *p = arg;
  mesh.cb.on_message(mesh.data, p, msg, len);
  return p->closing;
}

/* Delivers the message in p->in (whole) and empties it. */
static void deliver_held(mesh_peer_t *p) {
  mf_buf_t whole = p->in;
  mf_buf_init(&p->in);
  mesh.cb.on_message(mesh.data, p, whole.data + MESH_FRAME_HEAD, whole.len - MESH_FRAME_HEAD);
  mf_buf_free(&whole);
}

/* Delivers the whole frames in data; keeps a trailing partial frame in p->in. Returns -1 on a bad frame. */
static int deliver(mesh_peer_t *p, const char *data, size_t len) {
  ssize_t taken = mesh_frame_split(data, len, MESH_MAX_MESSAGE, on_frame, p);
  if (taken < 0) return -1;
  data += taken;
  len -= (size_t)taken;
  if (len > 0 && !p->closing) {
    if (mf_buf_reserve(&p->in, mesh_frame_need(data, len)) != 0 || mf_buf_append(&p->in, data, len) != 0) return -1;
  }
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  mesh_peer_t *p = h->data;
  /* Mid-frame with a known length: read straight into the frame's buffer. */
  if (p->in.len >= MESH_FRAME_HEAD) {
    size_t want = mesh_frame_need(p->in.data, p->in.len);
    if (want > p->in.len && p->in.cap >= want) {
      *buf = uv_buf_init(p->in.data + p->in.len, (unsigned)(want - p->in.len));
      return;
    }
  }
  *buf = uv_buf_init(mesh.readbuf, sizeof mesh.readbuf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mesh_peer_t *p = s->data;
  if (n < 0) {
    mesh_peer_close(p);
    return;
  }
  if (n == 0 || p->closing) return;
  int bad = 0;
  if (buf->base != mesh.readbuf) { /* read into p->in directly */
    p->in.len += (size_t)n;
    if (p->in.len == mesh_frame_need(p->in.data, p->in.len)) deliver_held(p);
  } else {
    const char *d = buf->base;
    size_t len = (size_t)n;
    if (p->in.len > 0) { /* complete the held frame first */
      int r = mesh_frame_fill(&p->in, &d, &len, MESH_MAX_MESSAGE);
      if (r == 1) deliver_held(p);
      bad = r < 0;
    }
    if (!bad && len > 0 && !p->closing) bad = deliver(p, d, len);
  }
  if (bad) {
    mf_log("mesh: bad frame from worker %d: closing its stream", p->id);
    mesh_peer_close(p);
  }
}

/* Whether the worker at the other end of p is gone (p ends at EOF, maybe after unread messages). */
static int peer_gone(mesh_peer_t *p) {
  uv_os_fd_t fd;
  if (p->closing || uv_fileno((uv_handle_t *)p->pipe, &fd) != 0) return 1;
  struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
  return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* The stream a new one to worker (id, serial) must wait behind: one to the same worker (a repair), or
 * to a worker with that id that is gone (a respawn); NULL when there is none. */
static mesh_peer_t *peer_before(int id, long serial) {
  for (mesh_peer_t *p = mesh.peers; p; p = p->next)
    if (p->id == id && (p->serial == serial || peer_gone(p))) return p;
  return NULL;
}

void mesh_add_peer(uv_pipe_t *pipe, int id, long serial) {
  mesh_peer_t *old = peer_before(id, serial);
  if (old) { /* a stream made again, or to a respawned worker: after the old one ends (read to EOF) */
    if (old->successor) uv_close((uv_handle_t *)old->successor, (uv_close_cb)free);
    old->successor = pipe;
    old->successor_serial = serial;
    return;
  }
  mesh_peer_t *p = calloc(1, sizeof *p);
  if (p == NULL) {
    uv_close((uv_handle_t *)pipe, (uv_close_cb)free);
    return;
  }
  p->pipe = pipe;
  p->user_ref = MF_NO_REF;
  p->id = id;
  p->serial = serial;
  pipe->data = p;
  writeq_init(&p->wq, (uv_stream_t *)pipe, MESH_HIGH_WATER, on_write_drain, on_write_error);
  p->next = mesh.peers;
  if (mesh.peers) mesh.peers->prev = p;
  mesh.peers = p;
  uv_read_start((uv_stream_t *)pipe, on_alloc, on_read);
  if (mesh.cb.on_peer) mesh.cb.on_peer(mesh.data, p);
}
