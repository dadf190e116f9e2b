/* ws_conn.c -- WebSocket connections in a worker: frames in, whole messages out, the close handshake,
 * idle timeouts and pings (RFC 6455 §5-7; compression in ws_deflate.c, the codec in ws_frame.c).
 *
 * Memory first: issue 19 wants an idle connection at half a kilobyte. So the socket is read into one
 * buffer per worker, and a connection has buffers of its own (ws_rx_t) only while a frame is unfinished
 * or a fragmented or compressed message is being put together; they are freed once used. Timeouts and
 * pings come from one timer per worker that walks the list of connections, rather than a timer each (a
 * uv_timer_t is 150 bytes); writes go through mf_writeq with a bit for backpressure, not a writeq_t (56
 * bytes). An idle connection is its 336-byte struct, uv_tcp_t 248 of it. Lua never runs here. */
#include "ws_conn.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "util.h"
#include "writeq.h"
#include "ws_chan.h"
#include "ws_frame.h"

#define WS_CLOSE_WAIT_MS 3000 /* how long a closing connection waits for the peer's close or FIN */
#define WS_CORK_MAX (64 * 1024) /* frames gathered while a read is handled, at most (see frame_out) */

enum { WS_PENDING, WS_OPEN, WS_CLOSING, WS_DONE };

/* What a connection buffers, allocated only while it holds something: an idle connection has none
 * (two mf_buf_t in every connection were 48 of its bytes). */
typedef struct {
  mf_buf_t in;  /* an unfinished frame (while PENDING: what to send once open) */
  mf_buf_t msg; /* a message being put together; while CLOSING: the reason we closed with */
} ws_rx_t;

struct ws_conn_s {
  uv_tcp_t tcp;
  ws_conn_t *prev, *next; /* every connection of the worker */
  ws_rx_t *rx;            /* buffers, only while one holds something (see ws_rx_t), else NULL */
  ws_deflate_t *z;        /* permessage-deflate negotiated, else NULL */
  void *ud;               /* the Lua side's (bind_ws.c) */
  void *subs;             /* the channels it is a member of (ws_chan.c) */
  int refs[WS_NREFS];
  uint32_t max_payload;   /* (4 bytes less than a uint64_t: 4 GiB is plenty for a message held whole) */
  uint32_t idle_ms, ping_ms;
  /* loop time in ms, 32 bits (differences wrap correctly): the last bytes from the client; while OPEN
   * when we last pinged, after that the deadline for the close handshake */
  uint32_t last_rx, mark;
  ws_utf8_t utf8;          /* a text message's UTF-8 so far */
  uint8_t msg_z : 1;       /* the message being received is compressed */
  uint8_t tcp_open : 1;    /* tcp was initialised: close it */
  uint8_t told : 1;        /* on_close was called */
  uint8_t freeing : 1;
  uint8_t deferred : 1;    /* in ws.later: bytes that came with the request wait for the next turn */
  uint8_t above : 1;       /* a send said "slow down": on_drain is due */
  uint16_t close_code;     /* what we closed with (CLOSING) */
  uint8_t state;
  uint8_t msg_op;          /* the opcode of the message being received, 0 when none */
};

static struct {
  uv_loop_t *loop;
  const ws_callbacks_t *cb;
  void *data;
  ws_conn_t *head;
  size_t count;
  uv_timer_t tick;
  uint32_t tick_ms, ticking;
  void (*on_gone)(void);
  ws_conn_t *corked;      /* the connection whose input is being handled: its frames gather in cork */
  mf_buf_t cork;
  uv_idle_t idle;         /* runs ws.later */
  ws_conn_t **later;      /* connections whose first bytes are read on the next turn */
  size_t nlater, caplater;
  mf_buf_t zout;          /* a compressed message on its way out */
  uint8_t rbuf[64 * 1024]; /* every connection reads here */
} ws;

static void tick(uv_timer_t *t);
static int cork_flush(ws_conn_t *c);

/* The connection's buffers, made when first needed: NULL when out of memory. */
static ws_rx_t *rx_of(ws_conn_t *c) { return c->rx ? c->rx : (c->rx = calloc(1, sizeof *c->rx)); }

static void rx_free(ws_conn_t *c) {
  if (c->rx == NULL) return;
  mf_buf_free(&c->rx->in);
  mf_buf_free(&c->rx->msg);
  free(c->rx);
  c->rx = NULL;
}

/* Gives the buffers back once neither holds anything. */
static void rx_trim(ws_conn_t *c) { if (c->rx && c->rx->in.len == 0 && c->rx->msg.len == 0) rx_free(c); }

static size_t in_len(const ws_conn_t *c) { return c->rx ? c->rx->in.len : 0; }
static size_t msg_len(const ws_conn_t *c) { return c->rx ? c->rx->msg.len : 0; }
/* Our close reason (CLOSING). */
static const char *reason_of(const ws_conn_t *c) { return c->rx && c->rx->msg.data ? c->rx->msg.data : ""; }

void ws_init(uv_loop_t *loop, const ws_callbacks_t *cb, void *data) {
  ws.loop = loop;
  ws.cb = cb;
  ws.data = data;
  ws.tick_ms = 1000;
  uv_timer_init(loop, &ws.tick);
  uv_unref((uv_handle_t *)&ws.tick);
  uv_idle_init(loop, &ws.idle);
  uv_unref((uv_handle_t *)&ws.idle);
}

static uint32_t now32(void) { return (uint32_t)uv_now(ws.loop); }

size_t ws_conn_count(void) { return ws.count; }

void **ws_conn_ud(ws_conn_t *c) { return &c->ud; }

int *ws_conn_refs(ws_conn_t *c) { return c->refs; }
void **ws_conn_subs(ws_conn_t *c) { return &c->subs; }
ws_deflate_t *ws_conn_deflate(ws_conn_t *c) { return c->z; }

static void tick_start(uint32_t ms) {
  if (ms >= ws.tick_ms && ws.ticking) return;
  if (ms < ws.tick_ms) ws.tick_ms = ms;
  ws.ticking = 1;
  uv_timer_start(&ws.tick, tick, ws.tick_ms, ws.tick_ms);
}

ws_conn_t *ws_conn_new(const ws_options_t *o) {
  ws_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  if (o->deflate && (c->z = ws_deflate_new(o->deflate)) == NULL) {
    free(c);
    return NULL;
  }
  c->max_payload = o->max_payload > UINT32_MAX ? UINT32_MAX : (uint32_t)o->max_payload;
  c->idle_ms = o->idle_ms;
  c->ping_ms = o->ping_ms;
  for (int i = 0; i < WS_NREFS; i++) c->refs[i] = MF_NO_REF;
  c->state = WS_PENDING;
  c->next = ws.head;
  if (ws.head) ws.head->prev = c;
  ws.head = c;
  ws.count++;
  http_taken(1);
  uint32_t shortest = c->idle_ms && (!c->ping_ms || c->idle_ms < c->ping_ms) ? c->idle_ms : c->ping_ms;
  tick_start(shortest ? (shortest / 4 < 10 ? 10 : shortest / 4 > 1000 ? 1000 : shortest / 4) : 1000);
  return c;
}

/* ---- the end of a connection ----------------------------------------------------------------- */

static void conn_free(ws_conn_t *c) {
  for (size_t i = 0; c->deferred && i < ws.nlater; i++)
    if (ws.later[i] == c) ws.later[i] = NULL;
  if (c->prev) c->prev->next = c->next;
  else ws.head = c->next;
  if (c->next) c->next->prev = c->prev;
  rx_free(c);
  ws_deflate_free(c->z);
  free(c);
  ws.count--;
  http_taken(-1);
  if (ws.count == 0) {
    uv_timer_stop(&ws.tick);
    ws.ticking = 0;
    if (ws.on_gone) {
      void (*gone)(void) = ws.on_gone;
      ws.on_gone = NULL;
      gone();
    }
  }
}

static void on_tcp_closed(uv_handle_t *h) { conn_free(mf_container_of(h, ws_conn_t, tcp)); }

/* Closes the socket now; the memory goes in the close callback. */
static void conn_destroy(ws_conn_t *c) {
  if (c->freeing) return;
  c->freeing = 1;
  c->state = WS_DONE;
  if (ws.corked == c) ws.cork.len = 0; /* (its frames go nowhere now) */
  if (c->tcp_open) uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
  else conn_free(c);
}

/* Tells the binding, once. The connection is done from here on (a send from the close callback finds
 * it closed); the caller shuts it down or destroys it next. */
static void conn_tell(ws_conn_t *c, unsigned code, const char *reason, size_t n) {
  if (c->told) return;
  c->told = 1;
  c->state = WS_DONE;
  if (c->subs) ws_chan_leave_all(c);
  ws.cb->on_close(ws.data, c, code, reason, n);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  ws_conn_t *c = req->data;
  free(req);
  if (status != 0) conn_destroy(c); /* else the peer's FIN (on_read) or the deadline ends it */
}

/* The close handshake is over on our side: the FIN goes after what is queued; the peer closes next. */
static void conn_shutdown(ws_conn_t *c) {
  if (ws.corked == c && cork_flush(c) < 0) return; /* the close frame goes before the FIN */
  c->state = WS_DONE;
  c->mark = now32() + WS_CLOSE_WAIT_MS;
  rx_free(c);
  if (!c->tcp_open) return; /* still PENDING: ws_conn_open closes */
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL) {
    conn_destroy(c);
    return;
  }
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    conn_destroy(c);
  }
}

/* ---- writing ---------------------------------------------------------------------------------- */

static size_t queued(ws_conn_t *c) { return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp); }

size_t ws_conn_queued(ws_conn_t *c) { return c->tcp_open ? queued(c) : 0; }

/* A queued write is done (uv_close cancels the others before the close callback: c is still there). */
static void on_write(uv_write_t *req, int status) {
  ws_conn_t *c = mf_container_of((uv_tcp_t *)req->handle, ws_conn_t, tcp);
  mf_writeq_done(req);
  if (status < 0) {
    if (status == UV_ECANCELED) return;
    conn_tell(c, c->state == WS_CLOSING ? c->close_code : WS_CLOSE_ABNORMAL, "", 0);
    conn_destroy(c);
    return;
  }
  if (c->above && queued(c) <= WS_HIGH_WATER / 2) {
    c->above = 0;
    if (c->state == WS_OPEN) ws.cb->on_drain(ws.data, c);
  }
}

/* Hands bufs to mf_writeq (no writeq_t: its 56 bytes a connection would be an eighth of the budget;
 * the backpressure rule is the same, high water and "drain" below half). 1, 0 (over high water) or
 * UV_EPIPE (the connection is gone: told 1006). */
static int bufs_out(ws_conn_t *c, const uv_buf_t *bufs, unsigned nbufs) {
  int stuck = queued(c) > WS_HARD_LIMIT;
  if (stuck) mf_log("websocket: the client does not read (%zu bytes queued): closing", queued(c));
  int r = stuck ? UV_ENOBUFS : mf_writeq((uv_stream_t *)&c->tcp, bufs, nbufs, on_write);
  if (r < 0) {
    conn_tell(c, WS_CLOSE_ABNORMAL, "", 0);
    conn_destroy(c);
    return UV_EPIPE;
  }
  if (queued(c) <= WS_HIGH_WATER) return 1;
  c->above = 1;
  return 0;
}

/* Writes what gathered in the cork (see frame_out). 1, 0 or UV_EPIPE as bufs_out. */
static int cork_flush(ws_conn_t *c) {
  if (ws.cork.len == 0 || c->freeing) {
    ws.cork.len = 0;
    return c->freeing ? UV_EPIPE : 1;
  }
  uv_buf_t b = uv_buf_init(ws.cork.data, (unsigned)ws.cork.len);
  int r = bufs_out(c, &b, 1);
  ws.cork.len = 0;
  mf_buf_reset(&ws.cork, 256 * 1024);
  return r;
}

/* Writes one frame, head and payload: 1, 0 (over high water) or UV_EPIPE (gone: told 1006). While its
 * input is handled (ws.corked), a connection's frames gather in one buffer written once at the end: an
 * echo of 16 pipelined messages is one send(2), not 16 (loopback TCP costs more than the rest). */
static int frame_write(ws_conn_t *c, const uint8_t *head, size_t hlen, const char *p, size_t n) {
  if (c->state == WS_PENDING) { /* the 101 is still on its way: keep it for ws_conn_open */
    ws_rx_t *x = rx_of(c);
    if (x == NULL || mf_buf_append(&x->in, head, hlen) != 0 || mf_buf_append(&x->in, p, n) != 0) return UV_ENOMEM;
    return 1;
  }
  if (c == ws.corked && n <= WS_CORK_MAX) {
    size_t before = ws.cork.len;
    if (mf_buf_append(&ws.cork, head, hlen) == 0 && mf_buf_append(&ws.cork, p, n) == 0) {
      if (ws.cork.len < WS_CORK_MAX && queued(c) + ws.cork.len <= WS_HIGH_WATER) return 1;
      return cork_flush(c);
    }
    ws.cork.len = before;
  }
  if (c == ws.corked && cork_flush(c) < 0) return UV_EPIPE; /* in order: what gathered goes first */
  uv_buf_t bufs[2] = {uv_buf_init((char *)head, (unsigned)hlen), uv_buf_init((char *)p, (unsigned)n)};
  return bufs_out(c, bufs, n ? 2 : 1);
}

static int frame_out(ws_conn_t *c, int opcode, int rsv1, const char *p, size_t n) {
  uint8_t head[10];
  return frame_write(c, head, ws_frame_head(head, 1, rsv1, opcode, n), p, n);
}

int ws_conn_send_frame(ws_conn_t *c, const uint8_t *head, size_t hlen, const char *p, size_t n) {
  return c->state != WS_OPEN && c->state != WS_PENDING ? UV_EPIPE : frame_write(c, head, hlen, p, n);
}

int ws_conn_send(ws_conn_t *c, int opcode, const char *p, size_t n) {
  if (c->state != WS_OPEN && c->state != WS_PENDING) return UV_EPIPE;
  if (c->z && n >= WS_DEFLATE_MIN && (opcode == WS_OP_TEXT || opcode == WS_OP_BINARY)) {
    if (ws_deflate_message(c->z, (const uint8_t *)p, n, &ws.zout) != 0) return UV_ENOMEM;
    int r = frame_out(c, opcode, 1, ws.zout.data, ws.zout.len);
    mf_buf_reset(&ws.zout, 256 * 1024);
    return r;
  }
  return frame_out(c, opcode, 0, p, n);
}

/* A close frame's payload: the code (none when 0) and up to 123 bytes of reason. */
static void close_out(ws_conn_t *c, unsigned code, const char *reason, size_t n) {
  char payload[125];
  size_t len = 0;
  if (code) {
    payload[0] = (char)(code >> 8);
    payload[1] = (char)code;
    len = 2 + (n > 123 ? 123 : n);
    memcpy(payload + 2, reason, len - 2);
  }
  frame_out(c, WS_OP_CLOSE, 0, payload, len);
}

void ws_conn_close(ws_conn_t *c, unsigned code, const char *reason, size_t n) {
  if (c->state != WS_OPEN && c->state != WS_PENDING) return;
  close_out(c, code, reason, n);
  if (c->freeing) return; /* the write failed: told 1006 already */
  if (c->rx) mf_buf_free(&c->rx->msg);
  ws_rx_t *x = n ? rx_of(c) : c->rx;
  if (x) mf_buf_append(&x->msg, reason, n > 123 ? 123 : n); /* (out of memory: no reason) */
  rx_trim(c);
  c->msg_op = 0;
  c->close_code = (uint16_t)(code ? code : WS_CLOSE_NO_STATUS);
  c->mark = now32() + WS_CLOSE_WAIT_MS;
  if (c->state == WS_OPEN) c->state = WS_CLOSING; /* (PENDING: ws_conn_open makes it CLOSING) */
}

/* The connection breaks the protocol (or sends too much, or bad text): close with `code` at once. */
static void conn_fail(ws_conn_t *c, unsigned code) {
  if (c->state == WS_OPEN) close_out(c, code, "", 0);
  conn_tell(c, code, "", 0);
  if (!c->freeing) conn_shutdown(c);
}

/* ---- reading ---------------------------------------------------------------------------------- */

/* A control frame (its payload unmasked). 0, or minus the close code to fail with. */
static int control_in(ws_conn_t *c, const ws_frame_t *f, const uint8_t *p) {
  if (f->opcode == WS_OP_PING) {
    if (c->state == WS_OPEN) frame_out(c, WS_OP_PONG, 0, (const char *)p, (size_t)f->len);
    return 0;
  }
  if (f->opcode == WS_OP_PONG) return 0;
  unsigned code;
  int r = ws_close_parse(p, (size_t)f->len, &code);
  if (r < 0) return r;
  const char *reason = f->len > 2 ? (const char *)p + 2 : "";
  size_t rlen = f->len > 2 ? (size_t)f->len - 2 : 0;
  if (c->state == WS_OPEN) { /* the peer closes: echo its code, and we are done */
    close_out(c, code == WS_CLOSE_NO_STATUS ? 0 : code, "", 0);
    conn_tell(c, code, reason, rlen);
  } else { /* the answer to our close */
    conn_tell(c, c->close_code, reason_of(c), msg_len(c));
  }
  if (!c->freeing) conn_shutdown(c);
  return 0;
}

/* A whole message is here: to the binding, then the buffer goes. */
static int message_out(ws_conn_t *c, const uint8_t *p, size_t n) {
  if (c->msg_op == WS_OP_TEXT) {
    if (c->msg_z && ws_utf8_feed(&c->utf8, p, n) != 0) return -WS_CLOSE_BAD_DATA;
    if (!ws_utf8_complete(&c->utf8)) return -WS_CLOSE_BAD_DATA;
  }
  int binary = c->msg_op == WS_OP_BINARY;
  c->msg_op = 0;
  ws.cb->on_message(ws.data, c, (const char *)p, n, binary);
  if (c->state != WS_CLOSING && c->rx) { /* (CLOSING: msg holds our reason now) */
    mf_buf_free(&c->rx->msg);
    rx_trim(c);
  }
  return 0;
}

/* A data frame (its payload unmasked). 0, or minus the close code to fail with. */
static int data_in(ws_conn_t *c, const ws_frame_t *f, const uint8_t *p) {
  if (c->state != WS_OPEN) return 0; /* after our close frame: dropped (RFC 6455 §5.5.1) */
  if (f->opcode == WS_OP_CONT) {
    if (c->msg_op == 0 || f->rsv1) return -WS_CLOSE_PROTOCOL; /* nothing to continue; RSV1 goes on the first */
  } else {
    if (c->msg_op != 0) return -WS_CLOSE_PROTOCOL; /* a new message inside a fragmented one */
    c->msg_op = f->opcode;
    c->msg_z = f->rsv1;
    memset(&c->utf8, 0, sizeof c->utf8);
  }
  size_t n = (size_t)f->len;
  if (c->msg_z) {
    ws_rx_t *x = rx_of(c);
    if (x == NULL) return -WS_CLOSE_INTERNAL;
    int r = ws_inflate(c->z, p, n, f->fin, &x->msg, (size_t)c->max_payload);
    if (r < 0) return r;
    return f->fin ? message_out(c, (const uint8_t *)x->msg.data, x->msg.len) : 0;
  }
  if (c->msg_op == WS_OP_TEXT && ws_utf8_feed(&c->utf8, p, n) != 0) return -WS_CLOSE_BAD_DATA; /* fail fast */
  if (f->fin && msg_len(c) == 0) return message_out(c, p, n); /* one frame: no copy */
  ws_rx_t *x = rx_of(c);
  if (x == NULL || mf_buf_append(&x->msg, p, n) != 0) return -WS_CLOSE_INTERNAL;
  return f->fin ? message_out(c, (const uint8_t *)x->msg.data, x->msg.len) : 0;
}

/* Handles the whole frames in p[0..n); returns the bytes used (an unfinished frame is left). */
static size_t frames_in(ws_conn_t *c, uint8_t *p, size_t n) {
  size_t off = 0;
  int flags = WS_PARSE_CLIENT | (c->z ? WS_PARSE_ALLOW_RSV1 : 0);
  while (c->state == WS_OPEN || c->state == WS_CLOSING) {
    ws_frame_t f;
    int h = ws_frame_parse(p + off, n - off, flags, &f);
    if (h == 0) break;
    int r = h < 0 ? h : 0;
    /* too big before it is all here: a message is held to max_payload (compressed ones as they inflate) */
    if (r == 0 && f.opcode < 8 && (f.len > c->max_payload || (!c->msg_z && msg_len(c) + f.len > c->max_payload)))
      r = -WS_CLOSE_TOO_BIG;
    if (r == 0 && n - off - (size_t)h < f.len) break; /* the payload is still coming */
    if (r == 0) {
      uint8_t *payload = p + off + h;
      ws_frame_unmask(payload, (size_t)f.len, f.mask, 0);
      off += (size_t)h + (size_t)f.len;
      r = f.opcode >= 8 ? control_in(c, &f, payload) : data_in(c, &f, payload);
    }
    if (r < 0) {
      conn_fail(c, (unsigned)-r);
      break;
    }
  }
  return off;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h, (void)suggested;
  *buf = uv_buf_init((char *)ws.rbuf, sizeof ws.rbuf);
}

/* New bytes: frames straight from the worker's buffer when nothing was left over, else after what
 * was; what stays unfinished is copied into the connection's own `in`. */
static void input_in(ws_conn_t *c, uint8_t *p, size_t n) {
  if (in_len(c) == 0) {
    size_t used = frames_in(c, p, n);
    if (used < n && (c->state == WS_OPEN || c->state == WS_CLOSING)) {
      ws_rx_t *x = rx_of(c);
      if (x == NULL || mf_buf_append(&x->in, p + used, n - used) != 0) conn_fail(c, WS_CLOSE_INTERNAL);
    }
    return;
  }
  ws_rx_t *x = c->rx;
  if (mf_buf_append(&x->in, p, n) != 0) {
    conn_fail(c, WS_CLOSE_INTERNAL);
    return;
  }
  size_t used = frames_in(c, (uint8_t *)x->in.data, x->in.len);
  if (c->rx != x) return; /* (the connection ended meanwhile: freed with it) */
  if (c->state == WS_DONE || used == x->in.len) {
    mf_buf_free(&x->in); /* idle again: no buffer */
    rx_trim(c);
  } else {
    mf_buf_consume(&x->in, used);
  }
}

/* New bytes from the client; what is sent to it meanwhile is corked (frame_out) and written at the end. */
static void bytes_in(ws_conn_t *c, uint8_t *p, size_t n) {
  c->last_rx = now32();
  if (ws.corked != NULL) { /* (never nested; were it, no cork) */
    input_in(c, p, n);
    return;
  }
  ws.corked = c;
  input_in(c, p, n);
  if (ws.cork.len) cork_flush(c);
  ws.corked = NULL;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  ws_conn_t *c = mf_container_of(s, ws_conn_t, tcp);
  if (nread < 0) { /* EOF or an error: the end, told 1006 unless the close handshake came first */
    int closing = c->state == WS_CLOSING;
    conn_tell(c, closing ? c->close_code : WS_CLOSE_ABNORMAL, closing ? reason_of(c) : "", closing ? msg_len(c) : 0);
    conn_destroy(c);
    return;
  }
  if (nread == 0 || c->state == WS_DONE) return; /* after the handshake: drained until the FIN */
  bytes_in(c, (uint8_t *)buf->base, (size_t)nread);
}

static void on_idle(uv_idle_t *h) {
  (void)h;
  uv_idle_stop(&ws.idle);
  for (size_t i = 0; i < ws.nlater; i++) {
    ws_conn_t *c = ws.later[i];
    if ((ws.later[i] = NULL, c) == NULL) continue;
    c->deferred = 0;
    if (in_len(c) > 0 && (c->state == WS_OPEN || c->state == WS_CLOSING)) bytes_in(c, (uint8_t *)"", 0);
  }
  ws.nlater = 0;
}

/* Frames the client sent with its request are read on the next turn of the loop, not now: the 101
 * may have gone out inside upgrade(), before the script could listen for "message". */
static void defer_bytes(ws_conn_t *c, const char *rest, size_t n) {
  ws_rx_t *x = rx_of(c);
  if (x == NULL || mf_buf_append(&x->in, rest, n) != 0) {
    conn_fail(c, WS_CLOSE_INTERNAL);
    return;
  }
  if (ws.nlater == ws.caplater) {
    size_t cap = ws.caplater ? ws.caplater * 2 : 16;
    ws_conn_t **p = realloc(ws.later, cap * sizeof *p);
    if (p == NULL) {
      conn_fail(c, WS_CLOSE_INTERNAL);
      return;
    }
    ws.later = p;
    ws.caplater = cap;
  }
  ws.later[ws.nlater++] = c;
  c->deferred = 1;
  uv_idle_start(&ws.idle, on_idle);
}

void ws_conn_open(ws_conn_t *c, int fd, const char *rest, size_t n) {
  if (fd < 0 || uv_tcp_init(ws.loop, &c->tcp) != 0) {
    if (fd >= 0) close(fd);
    conn_tell(c, c->close_code ? c->close_code : WS_CLOSE_ABNORMAL, "", 0);
    conn_destroy(c);
    return;
  }
  c->tcp_open = 1;
  if (uv_tcp_open(&c->tcp, fd) != 0) {
    close(fd);
    conn_tell(c, WS_CLOSE_ABNORMAL, "", 0);
    conn_destroy(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  c->last_rx = now32();
  if (!c->close_code) c->mark = c->last_rx; /* (closing: mark is the deadline) */
  c->state = c->close_code ? WS_CLOSING : WS_OPEN;
  if (in_len(c) > 0) { /* what was sent before the socket came */
    uv_buf_t b = uv_buf_init(c->rx->in.data, (unsigned)c->rx->in.len);
    int r = mf_writeq((uv_stream_t *)&c->tcp, &b, 1, on_write);
    mf_buf_free(&c->rx->in);
    rx_trim(c);
    if (r < 0) {
      conn_tell(c, WS_CLOSE_ABNORMAL, "", 0);
      conn_destroy(c);
      return;
    }
  }
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (n > 0) defer_bytes(c, rest, n);
}

/* ---- time: idle timeouts, pings, closing deadlines ------------------------------------------ */

static void tick_one(ws_conn_t *c, uint32_t now) {
  if (c->state == WS_OPEN) {
    uint32_t quiet = now - c->last_rx;
    if (c->idle_ms && quiet >= c->idle_ms) {
      ws_conn_close(c, WS_CLOSE_GOING_AWAY, "idle timeout", 12);
    } else if (c->ping_ms && quiet >= c->ping_ms && now - c->mark >= c->ping_ms) {
      c->mark = now;
      frame_out(c, WS_OP_PING, 0, "", 0);
    }
  } else if ((c->state == WS_CLOSING || c->state == WS_DONE) && (int32_t)(now - c->mark) >= 0) {
    conn_tell(c, c->state == WS_CLOSING ? c->close_code : WS_CLOSE_ABNORMAL, "", 0);
    conn_destroy(c);
  }
}

static void tick(uv_timer_t *t) {
  (void)t;
  uint32_t now = now32();
  for (ws_conn_t *c = ws.head, *next; c != NULL; c = next) {
    next = c->next;
    if (!c->freeing) tick_one(c, now);
  }
}

void ws_drain(void (*on_gone)(void)) {
  if (ws.count == 0) {
    on_gone();
    return;
  }
  ws.on_gone = on_gone;
  for (ws_conn_t *c = ws.head; c != NULL; c = c->next)
    if (!c->freeing) ws_conn_close(c, WS_CLOSE_GOING_AWAY, "going away", 10);
}
