/* http_server.c -- the listener of a worker: accepting, balance between workers, draining, counters.
 *
 * Every worker polls the one listening socket (or its own, with --reuseport) and accepts a few
 * connections per wake-up, stepping back when the scoreboard shows a less loaded worker (see
 * on_listener). Connections themselves live in http_conn.c; this file keeps their list and count, so
 * it knows when a drain is over and when it may accept again after --max-connections. A WebSocket
 * (ws_conn.c) or a proxied tunnel (http_pass_tunnel.c) was one of our connections before its upgrade
 * and counts as one until it closes, as nginx's worker_connections counts every connection: see
 * http_taken and server_count. */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_internal.h"
#include "log.h"
#include "scoreboard.h"
#include "ws_conn.h"

#define HTTP_ACCEPTS_PER_WAKE 4 /* connections taken per wake-up of the listener: see on_listener */

static void on_listener(uv_poll_t *p, int status, int events);

/* Counted in the worker, for every response, so --max-requests holds at any request rate. */
void http_server_count_response(http_server_t *srv) {
  if (++srv->requests == srv->request_limit && srv->cb.on_limit) srv->cb.on_limit(srv->data, srv->requests);
}

static void server_accept(http_server_t *srv) {
  if (srv->draining || srv->listener_closed || srv->accept_paused) return;
  uv_poll_start(&srv->listener, UV_READABLE, on_listener);
}

/* Connections taken over from HTTP and not closed yet (http_taken), and the server told of each that
 * closes (a worker has one). */
static size_t taken;
static http_server_t *taken_srv;

/* The connections that count against --max-connections, in the accept balance and in the status:
 * HTTP's and those taken over from them. (An upgrade counts twice from its taking until its HTTP side
 * has closed, a turn of the loop or two: an instant early, never late.) */
static size_t server_count(const http_server_t *srv) { return srv->nconns + taken; }

/* The counts in this worker's scoreboard entry, kept current for the master and the other workers. */
static void server_board(http_server_t *srv) {
  if (srv->sb == NULL) return;
  srv->sb->connections = server_count(srv);
  srv->sb->websockets = ws_conn_count();
}

static void server_drained(http_server_t *srv) {
  if (srv->draining && srv->nconns == 0 && !srv->drained_fired) {
    srv->drained_fired = 1;
    if (srv->cb.on_drained) srv->cb.on_drained(srv->data);
  }
}

void http_server_conn_added(http_server_t *srv, http_conn_t *c) {
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  size_t n = server_count(srv);
  if (n > srv->nconns_peak) srv->nconns_peak = n;
  if (n > srv->crowd_mark) srv->crowd_mark = n;
  server_board(srv);
}

void http_server_conn_removed(http_server_t *srv, http_conn_t *c) {
  if (c->queued) {
    http_conn_t **pp = &srv->resume_head;
    while (*pp && *pp != c) pp = &(*pp)->resume_next;
    if (*pp) *pp = c->resume_next;
  }
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->nconns--;
  server_board(srv);
}

/* A crowd has left (the connections are down to a quarter of the most since the last time, and on
 * down to none): give the allocator's free memory back to the system, which free() alone does not
 * when the freed structs lie between live ones. A few times per crowd (log4 of its size), cheap next
 * to the thousands of closes that led to it. */
#define HTTP_CROWD 1024

static void server_trim(http_server_t *srv) {
  size_t n = server_count(srv);
  if (srv->crowd_mark >= HTTP_CROWD) srv->crowd_left = 1;
  if (!srv->crowd_left || n > srv->crowd_mark / 4) return;
  srv->crowd_mark = n;
  if (n == 0) srv->crowd_left = 0;
  malloc_trim(0);
}

/* After an HTTP connection or a WebSocket closed. (Draining ends with HTTP's: the worker waits for
 * the WebSockets itself, ws_drain.) */
void http_server_conn_gone(http_server_t *srv) {
  server_trim(srv);
  if (srv->accept_paused && !srv->draining && !uv_is_active((uv_handle_t *)&srv->accept_retry) &&
      server_count(srv) < (size_t)srv->cfg->max_connections) {
    srv->accept_paused = 0;
    server_accept(srv); /* under the limit again: take connections */
  }
  server_drained(srv);
}

void http_taken(int delta) {
  taken = delta < 0 && taken == 0 ? 0 : taken + (size_t)(ssize_t)delta;
  if (taken_srv == NULL) return;
  server_board(taken_srv);
  if (delta < 0) http_server_conn_gone(taken_srv);
}

/* ---- request states ------------------------------------------------------------------------- */

#define HTTP_RQ_POOL 64 /* request states kept for reuse: more than the requests a worker runs at once */

http_rq_t *http_server_rq_get(http_server_t *srv) {
  http_rq_t *rq = srv->rq_free;
  if (rq != NULL) {
    srv->rq_free = rq->next_free;
    srv->rq_free_len--;
    return rq;
  }
  return calloc(1, sizeof *rq);
}

/* Takes rq back (its buffers empty; they keep what they had grown to, up to HTTP_KEEP_BUF). */
void http_server_rq_put(http_server_t *srv, http_rq_t *rq) {
  if (srv->rq_free_len >= HTTP_RQ_POOL) {
    http_parse_free(&rq->parser);
    mf_buf_free(&rq->body);
    mf_buf_free(&rq->pending);
    mf_buf_free(&rq->alog);
    free(rq);
    return;
  }
  rq->next_free = srv->rq_free;
  srv->rq_free = rq;
  srv->rq_free_len++;
}

static void on_accept_retry(uv_timer_t *t) {
  http_server_t *srv = mf_container_of(t, http_server_t, accept_retry);
  srv->accept_paused = 0;
  server_accept(srv);
}

/* Stops polling the listener; retry_ms > 0: poll again after that long. */
static void server_pause(http_server_t *srv, uint64_t retry_ms) {
  srv->accept_paused = 1;
  uv_poll_stop(&srv->listener);
  if (retry_ms > 0) uv_timer_start(&srv->accept_retry, on_accept_retry, retry_ms, 0);
}

/* The listening socket is shared by every worker and each is woken when it is readable. libuv's
 * accept loop would take the whole backlog in the worker that wakes first (a burst of connections
 * all on one worker; Node's docs report 70% on 2 of 8), so we accept ourselves, a few per wake-up:
 * the rest stay in the kernel's queue. Which worker gets there first is the scheduler's whim, so a
 * worker that holds clearly more connections than another ready, live one (the scoreboard says)
 * steps back for 2 ms and lets that one accept. At --max-connections the worker stops polling the
 * socket altogether, leaving new connections to the others. */
static void on_listener(uv_poll_t *p, int status, int events) {
  http_server_t *srv = p->data;
  (void)events;
  if (status < 0) {
    mf_log("listening socket: %s", uv_strerror(status));
    return;
  }
  for (int i = 0; i < HTTP_ACCEPTS_PER_WAKE; i++) {
    /* (With --reuseport the socket is ours alone: what waits there waits for us.) */
    size_t n = server_count(srv);
    if (!srv->cfg->reuseport && srv->board && scoreboard_fewer_elsewhere(srv->board, srv->sb_index, n)) {
      server_pause(srv, 2);
      return;
    }
    if (n >= (size_t)srv->cfg->max_connections) {
      mf_log("connection limit (%ld) reached: not accepting until one closes", srv->cfg->max_connections);
      server_pause(srv, 0);
      return;
    }
    int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      http_conn_new(srv, fd);
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) return;
    /* EMFILE, ENFILE, ENOBUFS...: the socket stays readable, so polling it now would spin */
    mf_log("accept: %s: pausing for 100 ms", strerror(errno));
    server_pause(srv, 100);
    return;
  }
}

http_server_t *http_server_new(uv_loop_t *loop, const mf_config_t *cfg, int fd, const http_callbacks_t *cb,
                               void *data, char *err, size_t errlen) {
  http_server_t *srv = calloc(1, sizeof *srv);
  if (srv == NULL) {
    snprintf(err, errlen, "out of memory");
    goto fail_alloc;
  }
  srv->loop = loop;
  srv->cfg = cfg;
  srv->cb = *cb;
  srv->data = data;
  srv->access_fd = -1;
  /* Non-blocking: another worker may take the connection between our wake-up and our accept. */
  int fl = fcntl(fd, F_GETFL);
  int r = fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  if (r == 0) r = uv_poll_init(loop, &srv->listener, fd);
  if (r != 0) {
    snprintf(err, errlen, "cannot use the listening socket (fd %d): %s", fd,
             r < 0 && r != -1 ? uv_strerror(r) : strerror(errno));
    goto fail_listener;
  }
  uv_idle_init(loop, &srv->idle);
  uv_prepare_init(loop, &srv->flush);
  uv_unref((uv_handle_t *)&srv->flush);
  uv_timer_init(loop, &srv->timer);
  uv_unref((uv_handle_t *)&srv->timer); /* the connections keep the loop alive, not their timeouts */
  uv_timer_init(loop, &srv->accept_retry);
  uv_unref((uv_handle_t *)&srv->accept_retry);
  srv->listener.data = srv;
  srv->listen_fd = fd;
  taken_srv = srv;
  return srv;

fail_listener:
  free(srv);
fail_alloc:
  return NULL;
}

int http_server_start(http_server_t *srv) { return uv_poll_start(&srv->listener, UV_READABLE, on_listener); }

void http_server_adopt(http_server_t *srv, int fd) { http_conn_new(srv, fd); }

/* Stops accepting for good; with --reuseport takes what is queued on our own socket first. */
static void server_close_listener(http_server_t *srv) {
  if (srv->listener_closed) return;
  srv->listener_closed = 1;
  if (srv->cfg->reuseport) { /* take what is queued on our socket: it may be parked for good */
    int fd;
    while ((fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0 || errno == EINTR)
      if (fd >= 0) http_conn_new(srv, fd);
  }
  uv_timer_stop(&srv->accept_retry);
  uv_close((uv_handle_t *)&srv->listener, NULL);
  close(srv->listen_fd); /* our copy: the socket lives on in the master and the other workers */
}

void http_server_drain(http_server_t *srv, int close_idle) {
  srv->draining = 1;
  server_close_listener(srv);
  for (http_conn_t *c = srv->conns, *next; c != NULL; c = next) {
    next = c->next;
    /* Idle between requests: flush, then FIN. A connection yet to send its first request is left to
     * send it (it is answered with Connection: close): closing it could cross that request. */
    if (close_idle && c->state == HTTP_CONN_IDLE && c->gen > 0 && (c->rq == NULL || c->rq->pending.len == 0) && !c->queued) http_conn_end(c);
  }
  server_drained(srv);
}

void http_server_set_scoreboard(http_server_t *srv, scoreboard_board_t *board, int index) {
  srv->board = board;
  srv->sb_index = index;
  srv->sb = &board->e[index];
}

void http_server_set_draining(http_server_t *srv) { srv->draining = 1; }

size_t http_server_conn_count(const http_server_t *srv) { return server_count(srv); }
uint64_t http_server_requests(const http_server_t *srv) { return srv->requests; }

void http_server_set_request_limit(http_server_t *srv, uint64_t n) { srv->request_limit = n; }

size_t http_server_take_conn_peak(http_server_t *srv) {
  size_t peak = srv->nconns_peak;
  srv->nconns_peak = server_count(srv);
  return peak;
}
