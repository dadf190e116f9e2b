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
#include "watchdog.h"

typedef enum { STATUS_INT, STATUS_KB, STATUS_SECONDS, STATUS_TEXT } status_type_t;

static const struct {
  const char *key;
  status_type_t type;
  size_t off;
  const char *head;
  int width;
} status_fields[] = {
#define STATUS_ROW(name, type, head, width) \
  {#name, STATUS_##type, offsetof(status_worker_t, name), head, width},
    STATUS_WORKER_FIELDS(STATUS_ROW)
#undef STATUS_ROW
};

#define NFIELDS (sizeof status_fields / sizeof status_fields[0])

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

static void worker_json(mf_buf_t *b, const status_worker_t *w) {
  for (size_t i = 0; i < NFIELDS; i++) {
    const char *p = (const char *)w + status_fields[i].off;
    mf_buf_appendf(b, "%s\"%s\":", i ? "," : "{", status_fields[i].key);
    switch (status_fields[i].type) {
      case STATUS_INT:
      case STATUS_KB: mf_buf_appendf(b, "%lld", *(const long long *)p); break;
      case STATUS_SECONDS: mf_buf_appendf(b, "%.1f", *(const double *)p); break;
      case STATUS_TEXT: mf_buf_appendf(b, "\"%s\"", p); break;
    }
  }
  mf_buf_append(b, "}", 1);
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
      worker_json(b, &w);
      any = 1;
      first = 0;
    }
    if (!any && id > g->nslots) break;
  }
  mf_buf_append(b, "]}", 3);
}

/* Reads field i of the worker object at w (up to its '}') into out. Returns 0, or -1 when absent. */
static int scan_field(const char *w, size_t i, status_worker_t *out) {
  char key[40];
  const char *end = strchr(w, '}');
  snprintf(key, sizeof key, "\"%s\":", status_fields[i].key);
  const char *p = strstr(w, key);
  if (p == NULL || (end && p > end)) return -1;
  p += strlen(key);
  char *dst = (char *)out + status_fields[i].off;
  switch (status_fields[i].type) {
    case STATUS_INT:
    case STATUS_KB: return sscanf(p, "%lld", (long long *)dst) == 1 ? 0 : -1;
    case STATUS_SECONDS: return sscanf(p, "%lf", (double *)dst) == 1 ? 0 : -1;
    case STATUS_TEXT: return sscanf(p, "\"%15[^\"]", dst) == 1 ? 0 : -1;
  }
  return -1;
}

static void print_row(FILE *out, const status_worker_t *w) {
  const char *sep = "";
  for (size_t i = 0; i < NFIELDS; i++) {
    const char *p = (const char *)w + status_fields[i].off;
    int width = status_fields[i].width;
    if (status_fields[i].head == NULL) continue;
    fputs(sep, out);
    sep = " ";
    switch (status_fields[i].type) {
      case STATUS_INT: fprintf(out, "%*lld", width, *(const long long *)p); break;
      case STATUS_KB: fprintf(out, "%*.1fMB", width - 2, (double)*(const long long *)p / 1024.0); break;
      case STATUS_SECONDS: fprintf(out, "%*.0fs", width - 1, *(const double *)p); break;
      case STATUS_TEXT: fprintf(out, "%*s", width, p); break;
    }
  }
  fputs("\n", out);
}

void status_print_workers(FILE *out, const char *json) {
  const char *sep = "";
  for (size_t i = 0; i < NFIELDS; i++) {
    if (status_fields[i].head == NULL) continue;
    fprintf(out, "%s%*s", sep, status_fields[i].width, status_fields[i].head);
    sep = " ";
  }
  fputs("\n", out);
  const char *w = strstr(json, "\"workers\":[");
  while (w && (w = strstr(w, "{\"id\":")) != NULL) {
    status_worker_t row;
    size_t i = 0;
    memset(&row, 0, sizeof row);
    while (i < NFIELDS && scan_field(w, i, &row) == 0) i++;
    if (i == NFIELDS) print_row(out, &row);
    w++;
  }
}
