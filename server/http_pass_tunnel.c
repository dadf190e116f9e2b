/* http_pass_tunnel.c -- after an upstream's 101: the client's socket and the upstream's relayed both
 * ways in C, as nginx relays an upgraded (WebSocket) connection.
 *
 * The 101 goes out through the server's response path, which then hands the client's socket over
 * (http_conn_takeover); until it does, nothing more is read from the upstream. From then on what one
 * side sends is written to the other's send queue, and a side is read only while the other's queue is
 * under its high-water mark: a slow reader stops its writer, however fast, so a tunnel costs the
 * worker a few buffers, never a stream. A FIN is passed on as a FIN once what came before it is out,
 * while the other direction goes on (half-close); once both directions have ended, or either side
 * fails, both are closed. So are a tunnel with no byte moving either way for its idle time (nginx's
 * proxy_read_timeout does this for upgraded connections) and every tunnel when the worker drains. */
#include <stdlib.h>
#include <unistd.h>

#include "http_pass_internal.h"

#define TUNNEL_HIGH_WATER (256 * 1024) /* a side's send queue: over it, the other side is not read */

typedef struct pass_tunnel_s pass_tunnel_t;

struct pass_tunnel_s {
  net_connect_stream_t client; /* the client's socket, once taken over (opened) */
  writeq_t cq;                 /* to the client */
  pass_up_t *up;               /* its handle's data is the tunnel */
  uv_timer_t timer;            /* the idle check */
  uv_shutdown_t cshut, ushut;  /* the FIN passed on to each side */
  mf_buf_t early;              /* what the upstream sent behind its 101, until the client's socket comes */
  uint64_t idle_ms, last;      /* loop time a byte last moved */
  uint64_t sent_seen;          /* both queues' writeq_sent at the last idle check */
  pass_tunnel_t *prev, *next;
  int refs;                    /* the timer, the upstream, and the client's socket (or the takeover) */
  unsigned opened : 1, closing : 1, c_eof : 1, u_eof : 1, c_fin : 1, u_fin : 1;
};

static struct {
  uv_loop_t *loop;
  pass_tunnel_t *head; /* every open tunnel */
  mf_buf_t lines;      /* the 101's header lines being built (reused) */
} tunnel;

static void tunnel_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void tunnel_up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

void http_pass_tunnel_init(uv_loop_t *loop) { tunnel.loop = loop; }

/* ---- life and death ------------------------------------------------------------------------------ */

static void tunnel_release(pass_tunnel_t *t) {
  if (--t->refs > 0) return;
  mf_buf_free(&t->early);
  free(t);
  http_taken(-1); /* counted since http_pass_tunnel_start */
}

static void tunnel_closed(uv_handle_t *h) { tunnel_release(h->data); }

static void tunnel_up_free(uv_handle_t *h) { free(mf_container_of((net_connect_stream_t *)h, pass_up_t, h)); }

static void tunnel_up_closed(uv_handle_t *h) {
  pass_tunnel_t *t = h->data;
  tunnel_up_free(h);
  tunnel_release(t);
}

/* Closes both sides (what is queued is dropped); the memory goes with the last close callback. */
static void tunnel_close(pass_tunnel_t *t) {
  if (t->closing) return;
  t->closing = 1;
  if (t->prev) t->prev->next = t->next; else tunnel.head = t->next;
  if (t->next) t->next->prev = t->prev;
  uv_close((uv_handle_t *)&t->timer, tunnel_closed);
  uv_close(&t->up->h.handle, tunnel_up_closed);
  if (t->opened) uv_close(&t->client.handle, tunnel_closed);
}

void http_pass_tunnel_close_all(void) {
  while (tunnel.head) tunnel_close(tunnel.head);
}

/* No byte moved either way (read, or queued bytes going out) for the idle time: both sides close. */
static void tunnel_tick(uv_timer_t *tm) {
  pass_tunnel_t *t = tm->data;
  uint64_t now = uv_now(tunnel.loop), sent = writeq_sent(&t->cq) + writeq_sent(&t->up->q);
  if (sent != t->sent_seen) {
    t->sent_seen = sent;
    t->last = now;
  }
  if (now - t->last >= t->idle_ms) {
    tunnel_close(t);
    return;
  }
  uv_timer_start(tm, tunnel_tick, t->idle_ms - (now - t->last), 0);
}

/* ---- relaying ------------------------------------------------------------------------------------ */

/* Writes to one side's queue: 0, 1 (over high water: stop reading the other side), or a negative
 * UV_E* code (the tunnel is closed). */
static int tunnel_write(pass_tunnel_t *t, writeq_t *q, const char *data, size_t n) {
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
  int r = n ? writeq_write(q, &b, 1) : 0;
  if (r < 0) tunnel_close(t);
  return r;
}

static void tunnel_shut(uv_shutdown_t *req, int status) {
  pass_tunnel_t *t = req->handle->data;
  if (t->closing) return;
  if (status < 0) {
    tunnel_close(t);
    return;
  }
  if (req == &t->cshut) t->c_fin = 1; else t->u_fin = 1;
  if (t->c_fin && t->u_fin) tunnel_close(t); /* both directions are over */
}

/* A side sent its FIN: the other gets one once what is queued for it is out (uv_shutdown waits). */
static void tunnel_fin(pass_tunnel_t *t, uv_shutdown_t *req, uv_stream_t *to) {
  if (uv_shutdown(req, to, tunnel_shut) != 0) tunnel_close(t);
}

/* Reads from `from` go to q: n bytes, or the end of that side (n < 0). */
static void tunnel_relay(pass_tunnel_t *t, uv_stream_t *from, writeq_t *q, ssize_t n, const uv_buf_t *buf) {
  if (n > 0) {
    t->last = uv_now(tunnel.loop);
    if (tunnel_write(t, q, buf->base, (size_t)n) == 1) uv_read_stop(from); /* until q drains */
    return;
  }
  if (n != UV_EOF) {
    tunnel_close(t);
    return;
  }
  if (from == &t->client.stream) t->c_eof = 1; else t->u_eof = 1;
  tunnel_fin(t, from == &t->client.stream ? &t->ushut : &t->cshut, q->stream);
}

static void tunnel_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  pass_tunnel_t *t = s->data;
  if (n != 0) tunnel_relay(t, s, &t->up->q, n, buf);
}

static void tunnel_up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  pass_tunnel_t *t = s->data;
  if (n != 0) tunnel_relay(t, s, &t->cq, n, buf);
}

static void tunnel_read_client(pass_tunnel_t *t) {
  if (!t->closing && !t->c_eof && net_connect_read(&t->client, tunnel_client_read) != 0) tunnel_close(t);
}

static void tunnel_read_up(pass_tunnel_t *t) {
  if (!t->closing && !t->u_eof && net_connect_read(&t->up->h, tunnel_up_read) != 0) tunnel_close(t);
}

/* A queue fell under half its high-water mark: the side that fills it is read again. */
static void tunnel_client_drained(writeq_t *q) { tunnel_read_up(q->stream->data); }

static void tunnel_up_drained(writeq_t *q) {
  pass_tunnel_t *t = q->stream->data;
  if (t->opened) tunnel_read_client(t);
}

static void tunnel_failed(writeq_t *q, int status) {
  (void)status;
  tunnel_close(q->stream->data);
}

/* ---- the hand-over ------------------------------------------------------------------------------- */

/* The 101 is out: the client's socket is the tunnel's (fd), with what the client sent after its
 * request (rest); or the client left first (fd < 0). The takeover's reference becomes the socket's. */
static void tunnel_taken(void *arg, int fd, const char *rest, size_t n) {
  pass_tunnel_t *t = arg;
  if (fd < 0 || t->closing || net_connect_init(tunnel.loop, &t->client, 0, t) != 0) {
    if (fd >= 0) close(fd);
    tunnel_close(t);
    tunnel_release(t);
    return;
  }
  t->opened = 1;
  if (uv_tcp_open(&t->client.tcp, fd) != 0) {
    close(fd);
    tunnel_close(t);
    return;
  }
  writeq_init(&t->cq, &t->client.stream, TUNNEL_HIGH_WATER, tunnel_client_drained, tunnel_failed);
  t->last = uv_now(tunnel.loop);
  if (t->idle_ms) uv_timer_start(&t->timer, tunnel_tick, t->idle_ms, 0);
  int cfull = tunnel_write(t, &t->cq, t->early.data, t->early.len);
  int ufull = cfull < 0 ? -1 : tunnel_write(t, &t->up->q, rest, n);
  if (ufull < 0) return;
  mf_buf_free(&t->early);
  if (!ufull) tunnel_read_client(t);
  if (!cfull) tunnel_read_up(t);
}

const char *http_pass_tunnel_start(pass_up_t *u, http_conn_t *c, uint32_t gen, const char *headers, size_t len,
                                   uint64_t idle_ms, const char *rest, size_t rest_len, int *sent) {
  pass_tunnel_t *t = calloc(1, sizeof *t);
  *sent = 0;
  if (t == NULL) {
    uv_close(&u->h.handle, tunnel_up_free);
    return "out of memory";
  }
  uv_read_stop(&u->h.stream); /* nothing more from the upstream until the client's socket is ours */
  u->x = NULL;
  u->h.handle.data = t;
  u->q.on_drain = tunnel_up_drained;
  u->q.on_error = tunnel_failed;
  t->up = u;
  t->idle_ms = idle_ms;
  t->refs = 3;
  http_taken(1);
  uv_timer_init(tunnel.loop, &t->timer);
  t->timer.data = t;
  mf_buf_init(&t->early);
  t->next = tunnel.head;
  if (tunnel.head) tunnel.head->prev = t;
  tunnel.head = t;
  const char *err = NULL;
  tunnel.lines.len = 0;
  if (mf_buf_append(&t->early, rest, rest_len) != 0 || http_pass_upgrade_head(&tunnel.lines, headers, len) != 0)
    err = "out of memory";
  else if (http_conn_respond(c, gen, 101, tunnel.lines.data, tunnel.lines.len, "", 0, 0, -1, 0) < 0)
    err = "client closed";
  if (err == NULL) {
    *sent = 1;
    int r = http_conn_takeover(c, gen, tunnel_taken, t);
    if (r != 0) err = r == UV_EINVAL ? "the client's request was no upgrade" : "client closed";
  }
  if (err != NULL) { /* the takeover's reference was never handed out */
    tunnel_close(t);
    tunnel_release(t);
  }
  return err;
}
