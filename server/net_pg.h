/* net_pg.h -- one non-blocking PostgreSQL connection (libpq) on the worker's loop. */
#ifndef MOONFORK_NET_PG_H
#define MOONFORK_NET_PG_H

#include "net_pg_lib.h" /* libpq, loaded at the first connection */
#include <uv.h>

typedef struct net_pg_s net_pg_t;

/* What a connection tells its owner. None of them runs after net_pg_close (which any of them may
 * call). on_connect: err NULL when the connection is ready. on_result: the query's result (an error
 * result when the server failed it; valid until the callback returns), or res NULL and err (the
 * connection failed before an answer). on_notify: a NOTIFY on a channel this connection LISTENs to.
 * on_dead: the connection is gone (the server closed it, the network failed); the owner closes it. */
typedef struct {
  void (*on_connect)(net_pg_t *p, const char *err);
  void (*on_result)(net_pg_t *p, const PGresult *res, const char *err);
  void (*on_notify)(net_pg_t *p, const char *channel, const char *payload);
  void (*on_dead)(net_pg_t *p, const char *err);
} net_pg_callbacks_t;

/* The worker's loop and callbacks, once, before any other call. */
void net_pg_init(uv_loop_t *loop, const net_pg_callbacks_t *cb);
/* Starts connecting (PQconnectStart) with a libpq connection string; on_connect follows. NULL with
 * err filled when it cannot even start (a malformed string, out of memory). The caller owns the
 * connection until net_pg_close. */
net_pg_t *net_pg_connect(const char *conninfo, char *err, size_t errlen);
/* Sends a query with n text parameters (values[i] NULL: SQL NULL; formats[i] 1: sent as bytes, for
 * strings holding a NUL); on_result follows. 0, or -1 with the reason in net_pg_error (not connected,
 * a query already running, the connection failed). The values are copied before it returns. */
int net_pg_query(net_pg_t *p, const char *sql, int n, const char *const *values, const int *lengths,
                 const int *formats);
/* Why the last net_pg_query failed (libpq's message, trailing newline removed). */
const char *net_pg_error(net_pg_t *p);
/* 1 when connected with no query running and no transaction open (safe to pool as it is). */
int net_pg_idle(net_pg_t *p);
/* 1 when a transaction is open (or failed and not yet rolled back). */
int net_pg_in_transaction(net_pg_t *p);
/* Closes the connection (PQfinish): no callback runs after this; the memory goes now or, when
 * called from inside one of its callbacks, when that callback returns. */
void net_pg_close(net_pg_t *p);
/* The owner's slot (a binding's registry ref). */
int *net_pg_user_ref(net_pg_t *p);

#endif
