/* net_pg_lib.h -- libpq, loaded at the first connection rather than linked.
 *
 * Linked, libpq brings libssl, libcrypto, Kerberos and LDAP into every worker at start, Postgres used
 * or not (about 2 MB of RSS each, and OpenSSL no longer loaded lazily for sockets). So the binary does
 * not link it: the first net_pg_connect dlopens libpq.so.5 and fills `net_pg_lib` with what moonfork
 * calls. The header still gives the types and prototypes; below it, each PQ name used stands for its
 * pointer, so net_pg.c and bind_pg.c read as plain libpq code. Nothing here may be called before
 * net_pg_lib_load has succeeded (there is no connection before then). */
#ifndef MOONFORK_NET_PG_LIB_H
#define MOONFORK_NET_PG_LIB_H

#include <libpq-fe.h>
#include <stddef.h>

#define NET_PG_LIB_FUNCTIONS(X)                                                                          \
  X(PQclear) X(PQconnectPoll) X(PQconnectStart) X(PQconsumeInput) X(PQerrorMessage) X(PQfinish)          \
  X(PQflush) X(PQfreemem) X(PQgetResult) X(PQisBusy) X(PQnotifies) X(PQresultStatus) X(PQsendQueryParams) \
  X(PQsetnonblocking) X(PQsocket) X(PQstatus) X(PQtransactionStatus) X(PQcmdStatus) X(PQcmdTuples)       \
  X(PQfname) X(PQftype) X(PQgetisnull) X(PQgetlength) X(PQgetvalue) X(PQnfields) X(PQntuples)            \
  X(PQresultErrorField) X(PQresultErrorMessage)

#define NET_PG_LIB_FIELD(name) __typeof__(&name) name;
extern struct net_pg_lib_s {
  NET_PG_LIB_FUNCTIONS(NET_PG_LIB_FIELD)
} net_pg_lib;
#undef NET_PG_LIB_FIELD

/* Loads libpq once per process: 0, or -1 with why in err ("PostgreSQL client unavailable: ..."),
 * and then every later call fails the same way. */
int net_pg_lib_load(char *err, size_t errlen);

#ifndef NET_PG_LIB_NO_MACROS /* net_pg_lib.c resolves the real names */
#define PQclear net_pg_lib.PQclear
#define PQconnectPoll net_pg_lib.PQconnectPoll
#define PQconnectStart net_pg_lib.PQconnectStart
#define PQconsumeInput net_pg_lib.PQconsumeInput
#define PQerrorMessage net_pg_lib.PQerrorMessage
#define PQfinish net_pg_lib.PQfinish
#define PQflush net_pg_lib.PQflush
#define PQfreemem net_pg_lib.PQfreemem
#define PQgetResult net_pg_lib.PQgetResult
#define PQisBusy net_pg_lib.PQisBusy
#define PQnotifies net_pg_lib.PQnotifies
#define PQresultStatus net_pg_lib.PQresultStatus
#define PQsendQueryParams net_pg_lib.PQsendQueryParams
#define PQsetnonblocking net_pg_lib.PQsetnonblocking
#define PQsocket net_pg_lib.PQsocket
#define PQstatus net_pg_lib.PQstatus
#define PQtransactionStatus net_pg_lib.PQtransactionStatus
#define PQcmdStatus net_pg_lib.PQcmdStatus
#define PQcmdTuples net_pg_lib.PQcmdTuples
#define PQfname net_pg_lib.PQfname
#define PQftype net_pg_lib.PQftype
#define PQgetisnull net_pg_lib.PQgetisnull
#define PQgetlength net_pg_lib.PQgetlength
#define PQgetvalue net_pg_lib.PQgetvalue
#define PQnfields net_pg_lib.PQnfields
#define PQntuples net_pg_lib.PQntuples
#define PQresultErrorField net_pg_lib.PQresultErrorField
#define PQresultErrorMessage net_pg_lib.PQresultErrorMessage
#endif

#endif
