/* status.c -- the status reply: the master's JSON, the CLI's table, both from one table of fields.
 *
 * `moonfork status --json` prints the master's reply as it came; `moonfork status` prints it as a
 * table. Both are generated from STATUS_WORKER_FIELDS (status.h), so a counter added there appears in
 * the reply and, with a column head, in the table, and the two cannot drift apart. The counters come
 * from each worker's scoreboard entry (scoreboard.c), which the master reads without asking it. */
#include "status.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "reuseport.h"
#include "scoreboard.h"
#include "shdict_region.h"
#include "watchdog.h"

typedef enum { STATUS_INT, STATUS_KB, STATUS_SECONDS, STATUS_TEXT, STATUS_BYTES, STATUS_NAME } status_type_t;

typedef struct {
  const char *key;
  status_type_t type;
  size_t off;
  const char *head;
  int width;
} status_field_t;

static const status_field_t status_fields[] = {
#define STATUS_ROW(name, type, head, width) \
  {#name, STATUS_##type, offsetof(status_worker_t, name), head, width},
    STATUS_WORKER_FIELDS(STATUS_ROW)
#undef STATUS_ROW
};

static const status_field_t shared_fields[] = {
#define STATUS_ROW(name, type, head, width) \
  {#name, STATUS_##type, offsetof(status_shared_t, name), head, width},
    STATUS_SHARED_FIELDS(STATUS_ROW)
#undef STATUS_ROW
};

/* A table of fields: the workers' or the shared dicts'. */
typedef struct {
  const status_field_t *f;
  size_t n;
} status_table_t;

static const status_table_t worker_table = {status_fields, sizeof status_fields / sizeof status_fields[0]};
static const status_table_t shared_table = {shared_fields, sizeof shared_fields / sizeof shared_fields[0]};

static void status_escape(mf_buf_t *b, const char *s) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') mf_buf_appendf(b, "\\%c", ch);
    else if (ch < 0x20) mf_buf_appendf(b, "\\u%04x", ch);
    else mf_buf_append(b, s, 1);
  }
}

void status_reply(mf_buf_t *b, int ok, const char *key, const char *text) {
  mf_buf_appendf(b, "{\"ok\":%s,\"%s\":\"", ok ? "true" : "false", key);
  status_escape(b, text);
  mf_buf_append(b, "\"}", 3);
}

static void row_json(mf_buf_t *b, const status_table_t *t, const void *row) {
  for (size_t i = 0; i < t->n; i++) {
    const char *p = (const char *)row + t->f[i].off;
    mf_buf_appendf(b, "%s\"%s\":", i ? "," : "{", t->f[i].key);
    switch (t->f[i].type) {
      case STATUS_INT:
      case STATUS_BYTES:
      case STATUS_KB: mf_buf_appendf(b, "%lld", *(const long long *)p); break;
      case STATUS_SECONDS: mf_buf_appendf(b, "%.1f", *(const double *)p); break;
      case STATUS_TEXT:
      case STATUS_NAME:
        mf_buf_append(b, "\"", 1);
        status_escape(b, p);
        mf_buf_append(b, "\"", 1);
        break;
    }
  }
  mf_buf_append(b, "}", 1);
}

/* "shared":[...], the dicts this process mapped (the master: all of them), when there are any. */
static void shared_json(mf_buf_t *b) {
  int n = shdict_region_count();
  if (n == 0) return;
  mf_buf_appendf(b, ",\"shared\":[");
  for (int i = 0; i < n; i++) {
    status_shared_t row;
    shdict_stats_t st;
    shdict_stats(shdict_region_dict(i), &st);
    memset(&row, 0, sizeof row);
    snprintf(row.name, sizeof row.name, "%s", shdict_region_name(i));
    row.capacity = (long long)st.capacity, row.used = (long long)st.used, row.free = (long long)st.free;
    row.keys = (long long)st.keys, row.recoveries = (long long)st.recoveries;
    if (i) mf_buf_append(b, ",", 1);
    row_json(b, &shared_table, &row);
  }
  mf_buf_append(b, "]", 1);
}

static const char *state_name(const child_t *c) {
  return c->state == CHILD_STARTING ? "starting" : c->state == CHILD_READY ? "ready" : "draining";
}

static void child_status(const child_t *c, uint64_t now, status_worker_t *w) {
  const scoreboard_entry_t *sb = c->data;
  memset(w, 0, sizeof *w);
  w->id = c->id;
  w->pid = c->pid;
  w->serial = c->serial;
  snprintf(w->state, sizeof w->state, "%s", state_name(c));
  w->uptime = (double)(now - c->started_ms) / 1000.0;
  w->requests = sb ? (long long)sb->requests : 0;
  w->connections = sb ? (long long)sb->connections : 0;
  w->websockets = sb ? (long long)sb->websockets : 0;
  w->rss_kb = (long long)watchdog_rss_kb(c->pid);
  w->yields = sb ? (long long)sb->yields : 0;
}

void status_json(mf_buf_t *b, const status_master_t *m, const group_t *g) {
  mf_buf_appendf(b,
                 "{\"ok\":true,\"master\":{\"pid\":%d,\"uptime\":%.1f,\"url\":\"%s\",\"workers\":%d,"
                 "\"restarts\":%llu,\"reloading\":%s",
                 m->pid, m->uptime, m->url, g->nslots, (unsigned long long)m->restarts,
                 m->reloading ? "true" : "false");
  if (m->reuseport) {
    int sockets = 0;
    uint64_t handed = 0;
    reuseport_stats(&sockets, &handed);
    mf_buf_appendf(b, ",\"reuseport\":{\"sockets\":%d,\"handed_off\":%llu}", sockets,
                   (unsigned long long)handed);
  }
  mf_buf_append(b, "},\"workers\":[", 13);
  int first = 1;
  uint64_t now = uv_now(g->loop);
  for (int id = 1; id <= CHAN_MAX_ID; id++) { /* by id, then serial: the list is newest first */
    int any = 0;
    for (const child_t *c = g->children; c; c = c->next) {
      if (c->id != id || !group_child_running(c)) continue;
      status_worker_t w;
      child_status(c, now, &w);
      if (!first) mf_buf_append(b, ",", 1);
      row_json(b, &worker_table, &w);
      any = 1;
      first = 0;
    }
    if (!any && id > g->nslots) break;
  }
  mf_buf_append(b, "]", 1);
  shared_json(b);
  mf_buf_append(b, "}", 2);
}

/* Reads field i of the object at w (up to its '}') into out. Returns 0, or -1 when absent. */
static int scan_field(const status_table_t *t, const char *w, size_t i, void *out) {
  char key[40];
  const char *end = strchr(w, '}');
  snprintf(key, sizeof key, "\"%s\":", t->f[i].key);
  const char *p = strstr(w, key);
  if (p == NULL || (end && p > end)) return -1;
  p += strlen(key);
  char *dst = (char *)out + t->f[i].off;
  switch (t->f[i].type) {
    case STATUS_INT:
    case STATUS_BYTES:
    case STATUS_KB: return sscanf(p, "%lld", (long long *)dst) == 1 ? 0 : -1;
    case STATUS_SECONDS: return sscanf(p, "%lf", (double *)dst) == 1 ? 0 : -1;
    case STATUS_TEXT: return sscanf(p, "\"%15[^\"]", dst) == 1 ? 0 : -1;
    case STATUS_NAME: return sscanf(p, "\"%63[^\"]", dst) == 1 ? 0 : -1;
  }
  return -1;
}

static void print_bytes(FILE *out, int width, long long v) {
  char t[32];
  if (v >= 1LL << 30) snprintf(t, sizeof t, "%.1fG", (double)v / (1 << 30));
  else if (v >= 1LL << 20) snprintf(t, sizeof t, "%.1fM", (double)v / (1 << 20));
  else snprintf(t, sizeof t, "%.1fk", (double)v / 1024);
  fprintf(out, "%*s", width, t);
}

static void print_row(FILE *out, const status_table_t *t, const void *row) {
  const char *sep = "";
  for (size_t i = 0; i < t->n; i++) {
    const char *p = (const char *)row + t->f[i].off;
    int width = t->f[i].width;
    if (t->f[i].head == NULL) continue;
    fputs(sep, out);
    sep = " ";
    switch (t->f[i].type) {
      case STATUS_INT: fprintf(out, "%*lld", width, *(const long long *)p); break;
      case STATUS_KB: fprintf(out, "%*.1fMB", width - 2, (double)*(const long long *)p / 1024.0); break;
      case STATUS_SECONDS: fprintf(out, "%*.0fs", width - 1, *(const double *)p); break;
      case STATUS_TEXT:
      case STATUS_NAME: fprintf(out, "%*s", width, p); break;
      case STATUS_BYTES: print_bytes(out, width, *(const long long *)p); break;
    }
  }
  fputs("\n", out);
}

/* Prints the objects of the array `array` of json (from `start`) as a table with a head line. */
static void print_table(FILE *out, const status_table_t *t, const char *json, const char *array,
                        const char *start) {
  const char *w = strstr(json, array);
  if (w == NULL) return;
  const char *sep = "";
  for (size_t i = 0; i < t->n; i++) {
    if (t->f[i].head == NULL) continue;
    fprintf(out, "%s%*s", sep, t->f[i].width, t->f[i].head);
    sep = " ";
  }
  fputs("\n", out);
  const char *stop = strchr(w, ']');
  while ((w = strstr(w, start)) != NULL && (stop == NULL || w < stop)) {
    union {
      status_worker_t w;
      status_shared_t s;
    } row;
    size_t i = 0;
    memset(&row, 0, sizeof row);
    while (i < t->n && scan_field(t, w, i, &row) == 0) i++;
    if (i == t->n) print_row(out, t, &row);
    w++;
  }
}

void status_print_workers(FILE *out, const char *json) {
  print_table(out, &worker_table, json, "\"workers\":[", "{\"id\":");
  if (strstr(json, "\"shared\":[") == NULL) return;
  fputs("\n", out);
  print_table(out, &shared_table, json, "\"shared\":[", "{\"name\":");
}
