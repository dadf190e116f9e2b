/* status.h -- the status reply: the master's JSON, the CLI's table, both from one table of fields. */
#ifndef MOONFORK_STATUS_H
#define MOONFORK_STATUS_H

#include <stdint.h>
#include <stdio.h>

#include "group.h"
#include "util.h"

/* Every per-worker field of a status, in reply order: X(name, type, column head, column width). The
 * JSON key is the name; a NULL head keeps the field out of `moonfork status`'s table; a negative width
 * aligns the column left. Types: INT (a count), TEXT, SECONDS (shown rounded, with "s"), KB (shown in
 * MB). */
#define STATUS_WORKER_FIELDS(X)    \
  X(id, INT, "id", 4)              \
  X(pid, INT, "pid", 8)            \
  X(serial, INT, "serial", 7)      \
  X(state, TEXT, "state", -9)      \
  X(uptime, SECONDS, "uptime", 9)  \
  X(requests, INT, "requests", 10) \
  X(connections, INT, "conns", 7)  \
  X(websockets, INT, NULL, 0)      \
  X(rss_kb, KB, "rss", 9)          \
  X(yields, INT, NULL, 0)

typedef char status_text_t[16];
#define STATUS_CTYPE_INT long long
#define STATUS_CTYPE_KB long long
#define STATUS_CTYPE_SECONDS double
#define STATUS_CTYPE_TEXT status_text_t

typedef struct {
#define STATUS_FIELD(name, type, head, width) STATUS_CTYPE_##type name;
  STATUS_WORKER_FIELDS(STATUS_FIELD)
#undef STATUS_FIELD
} status_worker_t;

/* Each shared dict's fields (shdict_region.c), the same way: `moonfork status` prints them as a second
 * table. BYTES: a count of bytes (shown as k/M/G); NAME: a dict's name. */
#define STATUS_SHARED_FIELDS(X)          \
  X(name, NAME, "shared dict", -16)      \
  X(capacity, BYTES, "capacity", 9)      \
  X(used, BYTES, "used", 9)              \
  X(free, BYTES, "free", 9)              \
  X(keys, INT, "keys", 9)                \
  X(recoveries, INT, "recoveries", 10)

typedef char status_name_t[64];
#define STATUS_CTYPE_BYTES long long
#define STATUS_CTYPE_NAME status_name_t

typedef struct {
#define STATUS_FIELD(name, type, head, width) STATUS_CTYPE_##type name;
  STATUS_SHARED_FIELDS(STATUS_FIELD)
#undef STATUS_FIELD
} status_shared_t;

/* The master's own part of a status. */
typedef struct {
  int pid;
  double uptime;
  const char *url;
  uint64_t restarts;
  int reloading;
  int reuseport;
} status_master_t;

/* Appends the status reply: the master, then each running child of g (by id, then serial). */
void status_json(mf_buf_t *b, const status_master_t *m, const group_t *g);
/* Prints the workers of a status reply as `moonfork status`'s table (then the shared dicts', if any). */
void status_print_workers(FILE *out, const char *json);
/* Appends {"ok":true|false,"KEY":"TEXT"} with TEXT escaped. */
void status_reply(mf_buf_t *b, int ok, const char *key, const char *text);

#endif
