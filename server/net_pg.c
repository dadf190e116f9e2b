/* net_pg.c -- one non-blocking PostgreSQL connection (libpq) on the worker's loop.
 *
 * libpq does the protocol; this file only tells it when its socket is ready: PQconnectStart then
 * PQconnectPoll while connecting, PQsendQueryParams + PQflush to send, PQconsumeInput + PQgetResult
 * to read, all driven by a uv_poll_t on PQsocket (a new one when libpq moves to another socket while
 * connecting, as it does when it tries the next host). The poll always watches for reading once
 * connected, so a server that goes away (a restart, pg_terminate_backend) is seen at once, even on an
 * idle pooled connection, and NOTIFYs arrive between queries. C never closes a connection on its own:
 * it reports (on_dead) and the owner closes, as net_tcp.c does. A callback may close the connection
 * it is called for: `depth` defers the free until the callback returns. */
#include "net_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

enum { PG_CONNECTING, PG_IDLE, PG_BUSY, PG_DEAD };

struct net_pg_s {
  PGconn *conn;
  uv_poll_t *poll; /* on `fd`; its own allocation, freed in its close callback */
  int fd, events;
  int state;
  PGresult *res; /* the running query's answer so far: its first error, or its last result */
  int depth;     /* callbacks running for this connection */
  int user_ref;
  unsigned closed : 1;
  char msg[256];
};

static struct {
  uv_loop_t *loop;
  const net_pg_callbacks_t *cb;
} net_pg;

void net_pg_init(uv_loop_t *loop, const net_pg_callbacks_t *cb) {
  net_pg.loop = loop;
  net_pg.cb = cb;
}

static void net_pg_set_msg(net_pg_t *p, const char *m) {
  snprintf(p->msg, sizeof p->msg, "%s", m && *m ? m : "connection failed");
  size_t n = strlen(p->msg);
  while (n > 0 && (p->msg[n - 1] == '\n' || p->msg[n - 1] == ' ')) p->msg[--n] = '\0';
}

/* Takes libpq's last message as this connection's error. */
static const char *net_pg_libpq_error(net_pg_t *p) {
  net_pg_set_msg(p, PQerrorMessage(p->conn));
  return p->msg;
}

const char *net_pg_error(net_pg_t *p) { return p->msg; }

int *net_pg_user_ref(net_pg_t *p) { return &p->user_ref; }

int net_pg_idle(net_pg_t *p) {
  return !p->closed && p->state == PG_IDLE && PQstatus(p->conn) == CONNECTION_OK &&
         PQtransactionStatus(p->conn) == PQTRANS_IDLE;
}

int net_pg_in_transaction(net_pg_t *p) {
  if (p->closed || p->state == PG_DEAD) return 0;
  PGTransactionStatusType t = PQtransactionStatus(p->conn);
  return t == PQTRANS_INTRANS || t == PQTRANS_INERROR;
}

static void net_pg_unwatch(net_pg_t *p) {
  if (p->poll) uv_close((uv_handle_t *)p->poll, (uv_close_cb)free);
  p->poll = NULL;
  p->fd = -1;
}

static void net_pg_on_poll(uv_poll_t *h, int status, int events);

/* Watches libpq's current socket for `events`. 0 or a negative UV_E* code. */
static int net_pg_watch(net_pg_t *p, int events) {
  int fd = PQsocket(p->conn);
  if (fd < 0) return UV_EBADF;
  if (fd != p->fd) {
    net_pg_unwatch(p);
    p->poll = malloc(sizeof *p->poll);
    if (p->poll == NULL) return UV_ENOMEM;
    int r = uv_poll_init(net_pg.loop, p->poll, fd);
    if (r != 0) {
      free(p->poll);
      p->poll = NULL;
      return r;
    }
    p->poll->data = p;
    p->fd = fd;
    p->events = 0;
  }
  if (events == p->events) return 0;
  p->events = events;
  return uv_poll_start(p->poll, events, net_pg_on_poll);
}

/* The connection is gone: no more polling; the owner hears once, and closes. */
static void net_pg_dead(net_pg_t *p, const char *why) {
  if (p->state == PG_DEAD) return;
  p->state = PG_DEAD;
  if (why != p->msg) net_pg_set_msg(p, why);
  net_pg_unwatch(p);
  PQclear(p->res);
  p->res = NULL;
  net_pg.cb->on_dead(p, p->msg);
}

/* After a failed attempt (a refused connect) libpq has no socket until it is polled again: it then
 * tries the next address, or fails. */
static PostgresPollingStatusType net_pg_connect_poll(net_pg_t *p, PostgresPollingStatusType st) {
  for (int i = 0; i < 64 && PQsocket(p->conn) < 0 && st != PGRES_POLLING_FAILED && st != PGRES_POLLING_OK; i++)
    st = PQconnectPoll(p->conn);
  return st;
}

net_pg_t *net_pg_connect(const char *conninfo, char *err, size_t errlen) {
  if (net_pg_lib_load(err, errlen) != 0) return NULL;
  net_pg_t *p = calloc(1, sizeof *p);
  if (p == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  p->fd = -1;
  p->user_ref = MF_NO_REF;
  p->state = PG_CONNECTING;
  p->conn = PQconnectStart(conninfo);
  if (p->conn == NULL) {
    snprintf(err, errlen, "out of memory");
    goto fail_conn;
  }
  if (PQstatus(p->conn) == CONNECTION_BAD) {
    snprintf(err, errlen, "%s", net_pg_libpq_error(p));
    goto fail_start;
  }
  /* PQconnectStart's answer is "polling, writing", unless the first attempt already failed */
  if (net_pg_connect_poll(p, PGRES_POLLING_WRITING) == PGRES_POLLING_FAILED || PQsocket(p->conn) < 0) {
    snprintf(err, errlen, "%s", net_pg_libpq_error(p));
    goto fail_start;
  }
  int r = net_pg_watch(p, UV_WRITABLE);
  if (r != 0) {
    snprintf(err, errlen, "%s", uv_strerror(r));
    goto fail_start;
  }
  return p;
fail_start:
  net_pg_unwatch(p);
  PQfinish(p->conn);
fail_conn:
  free(p);
  return NULL;
}

static void net_pg_connecting(net_pg_t *p) {
  PostgresPollingStatusType st = net_pg_connect_poll(p, PQconnectPoll(p->conn));
  if (st == PGRES_POLLING_FAILED) {
    p->state = PG_DEAD;
    net_pg_unwatch(p);
    net_pg.cb->on_connect(p, net_pg_libpq_error(p));
    return;
  }
  int r = net_pg_watch(p, st == PGRES_POLLING_WRITING ? UV_WRITABLE : UV_READABLE);
  if (r != 0) {
    p->state = PG_DEAD;
    net_pg_unwatch(p);
    net_pg.cb->on_connect(p, uv_strerror(r));
    return;
  }
  if (st != PGRES_POLLING_OK) return;
  if (PQsetnonblocking(p->conn, 1) != 0) {
    p->state = PG_DEAD;
    net_pg.cb->on_connect(p, net_pg_libpq_error(p));
    return;
  }
  p->state = PG_IDLE;
  net_pg.cb->on_connect(p, NULL);
}

/* Keeps the query's first error, else its last result (a multi-result answer keeps its last). */
static void net_pg_keep(net_pg_t *p, PGresult *r) {
  if (p->res && PQresultStatus(p->res) == PGRES_FATAL_ERROR) {
    PQclear(r);
    return;
  }
  PQclear(p->res);
  p->res = r;
}

static int net_pg_is_copy(const PGresult *r) {
  ExecStatusType st = PQresultStatus(r);
  return st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH;
}

/* Hands every finished answer to the owner (who may send the next query, or close, from there). */
static void net_pg_results(net_pg_t *p) {
  while (!p->closed && p->state == PG_BUSY && !PQisBusy(p->conn)) {
    PGresult *r = PQgetResult(p->conn);
    if (r && net_pg_is_copy(r)) { /* libpq would wait for COPY data that no one sends */
      PQclear(r);
      net_pg_dead(p, "COPY is not supported by moonfork.pg: connection closed");
      return;
    }
    if (r) {
      net_pg_keep(p, r);
      continue;
    }
    r = p->res;
    p->res = NULL;
    p->state = PG_IDLE;
    net_pg.cb->on_result(p, r, r ? NULL : "the server sent no result");
    PQclear(r);
  }
}

static void net_pg_notifies(net_pg_t *p) {
  PGnotify *n;
  while (!p->closed && p->state != PG_DEAD && (n = PQnotifies(p->conn)) != NULL) {
    net_pg.cb->on_notify(p, n->relname, n->extra);
    PQfreemem(n);
  }
}

static void net_pg_io(net_pg_t *p, int events) {
  if (events & UV_WRITABLE) {
    int r = PQflush(p->conn);
    if (r < 0) return net_pg_dead(p, net_pg_libpq_error(p));
    if (r == 0 && net_pg_watch(p, UV_READABLE) != 0) return net_pg_dead(p, "cannot watch the socket");
  }
  if (!(events & (UV_READABLE | UV_DISCONNECT))) return;
  int ok = PQconsumeInput(p->conn);
  net_pg_results(p); /* a server that closes says why first (57P01...): that answer goes out */
  if (!p->closed && ok) net_pg_notifies(p);
  if (p->closed || p->state == PG_DEAD) return;
  if (!ok || PQstatus(p->conn) == CONNECTION_BAD) net_pg_dead(p, net_pg_libpq_error(p));
}

static void net_pg_on_poll(uv_poll_t *h, int status, int events) {
  net_pg_t *p = h->data;
  p->depth++;
  if (status < 0) { /* libuv stopped watching (POLLERR): libpq reads the socket's error itself */
    p->events = 0;
    events = UV_READABLE | UV_WRITABLE;
  }
  if (p->state == PG_CONNECTING)
    net_pg_connecting(p);
  else if (p->state != PG_DEAD)
    net_pg_io(p, events);
  if (status < 0 && !p->closed && p->state != PG_DEAD && p->state != PG_CONNECTING &&
      net_pg_watch(p, UV_READABLE | (PQflush(p->conn) == 1 ? UV_WRITABLE : 0)) != 0)
    net_pg_dead(p, uv_strerror(status));
  if (--p->depth == 0 && p->closed) free(p);
}

int net_pg_query(net_pg_t *p, const char *sql, int n, const char *const *values, const int *lengths,
                 const int *formats) {
  if (p->closed || p->state != PG_IDLE) {
    net_pg_set_msg(p, p->state == PG_BUSY ? "a query is already running on this connection"
                                          : "the connection is not open");
    return -1;
  }
  if (!PQsendQueryParams(p->conn, sql, n, NULL, values, lengths, formats, 0)) {
    net_pg_libpq_error(p);
    return -1;
  }
  p->state = PG_BUSY;
  int r = PQflush(p->conn);
  if (r >= 0 && net_pg_watch(p, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE) == 0) return 0;
  net_pg_libpq_error(p);
  p->state = PG_DEAD; /* the owner hears it from the -1 and closes */
  net_pg_unwatch(p);
  return -1;
}

void net_pg_close(net_pg_t *p) {
  if (p->closed) return;
  p->closed = 1;
  net_pg_unwatch(p);
  PQfinish(p->conn);
  PQclear(p->res);
  p->conn = NULL;
  p->res = NULL;
  if (p->depth == 0) free(p);
}
