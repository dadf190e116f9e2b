/* http_timer.c -- connection timeouts: state deadlines, the send timeout, and the worker's heap.
 *
 * A connection has one clock at a time for its state (headers, body, handler, keep-alive, linger)
 * and, while bytes wait to be sent, the send timeout. Neither is a uv_timer_t of its own (152 bytes
 * in every connection, most of what an idle one would cost): the connections with something due
 * sit in a binary min-heap of the worker, and one timer fires for the first of them. */
#include <stdlib.h>
#include <sys/ioctl.h>

#include "http_internal.h"
#include "log.h"

/* ---- connection timeouts --------------------------------------------------------------------
 * One timer for the whole worker instead of a uv_timer_t (152 bytes) in every connection: the
 * connections with something due sit in a binary min-heap on timer_due (8 bytes each), and the
 * worker's timer is set for the first of them. */

static int heap_before(http_server_t *srv, uint32_t a, uint32_t b) {
  return srv->heap[a]->timer_due < srv->heap[b]->timer_due;
}

static void heap_swap(http_server_t *srv, uint32_t a, uint32_t b) {
  http_conn_t *t = srv->heap[a];
  srv->heap[a] = srv->heap[b];
  srv->heap[b] = t;
  srv->heap[a]->heap_pos = a + 1;
  srv->heap[b]->heap_pos = b + 1;
}

static void heap_fix(http_server_t *srv, uint32_t i) {
  while (i > 0 && heap_before(srv, i, (i - 1) / 2)) {
    heap_swap(srv, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
  for (;;) {
    uint32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < srv->heap_len && heap_before(srv, l, m)) m = l;
    if (r < srv->heap_len && heap_before(srv, r, m)) m = r;
    if (m == i) return;
    heap_swap(srv, i, m);
    i = m;
  }
}

static void on_server_timer(uv_timer_t *t);
static void conn_on_timer(http_conn_t *c);

/* Sets the worker's timer for the first connection due, when that is sooner than it is set for. */
static void heap_arm(http_server_t *srv) {
  if (srv->heap_len == 0) return; /* (a timer set for nothing fires once and finds nothing) */
  uint64_t due = srv->heap[0]->timer_due;
  if (srv->timer_at != 0 && srv->timer_at <= due) return;
  uint64_t now = uv_now(srv->loop);
  srv->timer_at = due;
  uv_timer_start(&srv->timer, on_server_timer, due > now ? due - now : 0, 0);
}

void http_server_heap_set(http_server_t *srv, http_conn_t *c) {
  if (c->heap_pos == 0) {
    if (srv->heap_len == srv->heap_cap) {
      uint32_t cap = srv->heap_cap ? srv->heap_cap * 2 : 64;
      http_conn_t **h = realloc(srv->heap, cap * sizeof *h);
      if (h == NULL) { /* no memory for its place: it gets no timeout rather than a crash */
        mf_log("connection timeouts: out of memory");
        return;
      }
      srv->heap = h;
      srv->heap_cap = cap;
    }
    srv->heap[srv->heap_len] = c;
    c->heap_pos = ++srv->heap_len;
  }
  heap_fix(srv, c->heap_pos - 1);
  heap_arm(srv);
}

void http_server_heap_remove(http_server_t *srv, http_conn_t *c) {
  if (c->heap_pos == 0) return;
  uint32_t i = c->heap_pos - 1, last = --srv->heap_len;
  c->heap_pos = 0;
  if (i != last) {
    srv->heap[i] = srv->heap[last];
    srv->heap[i]->heap_pos = i + 1;
    heap_fix(srv, i);
  }
  if (srv->heap_cap > 1024 && srv->heap_len < srv->heap_cap / 4) { /* a crowd left: give its room back */
    http_conn_t **h = realloc(srv->heap, srv->heap_cap / 2 * sizeof *h);
    if (h != NULL) {
      srv->heap = h;
      srv->heap_cap /= 2;
    }
  }
}

static void on_server_timer(uv_timer_t *t) {
  http_server_t *srv = mf_container_of(t, http_server_t, timer);
  uint64_t now = uv_now(srv->loop);
  srv->timer_at = 0;
  while (srv->heap_len > 0 && srv->heap[0]->timer_due <= now) {
    http_conn_t *c = srv->heap[0];
    http_server_heap_remove(srv, c);
    conn_on_timer(c); /* may close it, or put it back for later */
  }
  heap_arm(srv);
}

/* ---- timers ---------------------------------------------------------------------------------- */

/* One timer per connection serves two clocks: the state's deadline (headers, handler, keep-alive,
 * linger) and, while anything is queued, the send timeout, which closes a client that reads nothing
 * for --send-timeout. Progress is judged by bytes gone out (writeq_sent), checked every quarter of the
 * timeout, so a slow reader that keeps reading is never cut off however long it takes. */

/* Arms the timer for the sooner of the two clocks. A request moves the deadline four times (headers,
 * handler, response started, keep-alive), so the timer is only re-armed when it must fire sooner than
 * it is set for; when it fires early it sleeps again until what is due. */
static void conn_arm(http_conn_t *c) {
  uint64_t due = c->deadline, check = http_conn_send_check(c);
  if (check != 0 && (due == 0 || check < due)) due = check;
  if (due == 0 || c->closing) return;
  if (c->heap_pos != 0 && c->timer_due <= due) return;
  c->timer_due = due;
  http_server_heap_set(c->srv, c);
}

static uint64_t send_step(uint64_t timeout) { return timeout >= 4 ? timeout / 4 : 1; }

/* Starts the send timeout once a write left bytes queued (on_write_empty stops it). */
void http_conn_send_watch(http_conn_t *c) {
  uint64_t timeout = c->srv->cfg->send_timeout_ms;
  if (timeout == 0 || c->wq == NULL) return;
  http_send_t *snd = mf_container_of(c->wq, http_send_t, wq);
  if (snd->send_check != 0) return;
  uint64_t now = uv_now(c->srv->loop);
  snd->sent_seen = writeq_sent(c->wq);
  snd->sent_at = now;
  snd->send_check = now + send_step(timeout);
  conn_arm(c);
}

/* Has the client read anything since the last check? Returns -1 when it has not for too long (the
 * connection is then closing). */
static int conn_send_check(http_conn_t *c, uint64_t now) {
  uint64_t timeout = c->srv->cfg->send_timeout_ms;
  if (c->wq == NULL) return 0; /* (all went out meanwhile) */
  http_send_t *snd = mf_container_of(c->wq, http_send_t, wq);
  uint64_t sent = writeq_sent(c->wq);
  if (sent != snd->sent_seen) {
    snd->sent_seen = sent;
    snd->sent_at = now;
  } else if (now - snd->sent_at >= timeout) {
    mf_log("client %s read nothing for %.1f s with %zu bytes to send: closing", http_conn_remote(c),
           (double)timeout / 1000.0, http_conn_queued(c));
    http_conn_close(c);
    return -1;
  }
  snd->send_check = now + send_step(timeout);
  if (snd->send_check > snd->sent_at + timeout) snd->send_check = snd->sent_at + timeout;
  return 0;
}

/* Whether the client's next request is already in the socket, unread. libuv runs due timers before it
 * polls for input, so after the loop was held up (a handler that blocked past --keepalive-timeout) an
 * idle connection's deadline can pass while a request the client sent in time waits to be read: that
 * request must be answered, not reset (nginx handles events before timers for the same reason). */
static int conn_input_waits(http_conn_t *c) {
  uv_os_fd_t fd;
  int n = 0;
  if (c->read_paused || uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0) return 0;
  return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/* The state's deadline passed. */
static void conn_expired(http_conn_t *c) {
  switch (c->state) {
    case HTTP_CONN_IDLE:
      if (conn_input_waits(c)) { /* read in this loop turn's poll: a new clock for the wait till then */
        http_conn_timer(c, c->srv->cfg->keepalive_timeout_ms);
        break;
      }
      http_conn_close(c);
      break;
    case HTTP_CONN_CLOSING:
      http_conn_close(c);
      break;
    case HTTP_CONN_HEAD:
    case HTTP_CONN_BODY:
      if (c->body_mode == HTTP_BODY_DISCARD) /* our response is out: only the dropped body is late */
        http_conn_close(c);
      else
        http_conn_fail(c, 408);
      break;
    case HTTP_CONN_HANDLING:
      if (c->body_open && !c->read_paused) { /* a body still arriving, while the handler has it */
        http_body_fail(c, 408);
        http_conn_fail(c, 408);
        http_body_tell(c);
      } else if (!c->head_sent) {
        mf_log("request timed out after %.1f s without a response; answering 503",
               (double)c->srv->cfg->request_timeout_ms / 1000.0);
        http_conn_fail(c, 503);
      }
      break;
    case HTTP_CONN_TAKEN:
      break;
  }
}

static void conn_on_timer(http_conn_t *c) {
  uint64_t now = uv_now(c->srv->loop);
  uint64_t check = http_conn_send_check(c);
  if (check != 0 && now >= check && conn_send_check(c, now) != 0) return;
  if (c->deadline != 0 && now >= c->deadline) {
    c->deadline = 0;
    conn_expired(c);
  }
  conn_arm(c); /* for what is still due (disarmed or moved later since: sleep until then) */
}

/* Sets the connection's state deadline, `ms` from now; 0 clears it. */
void http_conn_timer(http_conn_t *c, uint64_t ms) {
  if (ms == 0) {
    c->deadline = 0;
    return;
  }
  c->deadline = uv_now(c->srv->loop) + ms;
  conn_arm(c);
}

