/* reload.c -- a reload: probe the script again, then replace the workers one slot at a time.
 *
 * SIGHUP, `moonfork reload` and --watch all end here. The new script is probed first (script.c), so a
 * script that fails to load aborts the reload and the old workers keep serving. Then each slot's worker
 * is replaced in turn (group.c): a new one starts, and once it is ready the old one is retired, so every
 * slot always has a worker accepting. A replacement that fails to start ends the reload with its
 * reason, and every control client waiting for the result hears it. */
#include "reload.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "master.h"
#include "script.h"
#include "status.h"
#include "util.h"

typedef struct reply_s {
  control_conn_t *conn;
  struct reply_s *next;
} reply_t;

static struct {
  int active;
  int index;        /* the slot being replaced */
  reply_t *waiting; /* control clients to answer when it ends */
} reload;

int reload_active(void) { return reload.active; }

static void reply_all(const char *json) {
  reply_t *r = reload.waiting;
  reload.waiting = NULL;
  while (r) {
    reply_t *next = r->next;
    control_reply(r->conn, json);
    free(r);
    r = next;
  }
}

static void reload_finish(group_t *g, int ok, const char *error) {
  mf_buf_t b;
  mf_buf_init(&b);
  reload.active = 0;
  g->rolling = 0;
  if (ok) {
    mf_log("reload done: %d workers replaced", g->nslots);
    mf_buf_appendf(&b, "{\"ok\":true,\"workers\":%d}", g->nslots);
    mf_buf_append(&b, "", 1); /* reply_all takes a C string; appendf does not count the NUL */
  } else {
    mf_log("reload failed: %s", error);
    status_reply(&b, 0, "error", error);
  }
  reply_all(b.data);
  mf_buf_free(&b);
}

void reload_abort(group_t *g, const char *why) {
  if (reload.active) reload_finish(g, 0, why);
}

/* Replaces the next slot's worker, or ends the reload. */
static void reload_step(group_t *g) {
  while (reload.index < g->nslots && (g->slots[reload.index]->removed || !g->slots[reload.index]->cur))
    reload.index++; /* a slot waiting to respawn will start with the new code anyway */
  if (reload.index >= g->nslots) {
    reload_finish(g, 1, NULL);
    return;
  }
  group_slot_t *s = g->slots[reload.index];
  if (s->next) return; /* already being replaced (recycling): its readiness moves us on */
  group_spawn(s);
}

void reload_replaced(group_t *g, group_slot_t *s, int ok, const char *why) {
  if (!reload.active || reload.index >= g->nslots || g->slots[reload.index] != s) return;
  if (!ok) {
    reload_finish(g, 0, why);
    return;
  }
  reload.index++;
  reload_step(g);
}

/* The new configuration: the script's, but what a running server cannot change without a restart keeps
 * its old value, and the log says so. Returns 0, or -1 with the reason in err. */
static int reload_config(mf_config_t *next, char *err, size_t errlen) {
  const mf_config_t *cli = master_cli(), *cfg = master_config();
  *next = *cli;
  if (mf_script_probe(next, err, errlen) != 0) return -1;
  if (next->port != cli->port && !(cli->from_cli & 2) && cli->port != 0 && next->port != cfg->port)
    mf_log("reload: the script asks for port %ld; changing the port needs a restart", next->port);
  next->port = cfg->port;
  snprintf(next->host, sizeof next->host, "%s", cfg->host);
  next->workers = cfg->workers; /* scale is its own command */
  if (next->reuseport != cfg->reuseport)
    mf_log("reload: switching --reuseport %s needs a restart", next->reuseport ? "on" : "off");
  next->reuseport = cfg->reuseport;
  return 0;
}

static void reload_wait(control_conn_t *conn) {
  reply_t *r = conn ? malloc(sizeof *r) : NULL;
  if (r == NULL) return;
  r->conn = conn;
  r->next = reload.waiting;
  reload.waiting = r;
}

void reload_start(group_t *g, const char *why, control_conn_t *conn) {
  char err[1024];
  reload_wait(conn);
  if (g->stopping) {
    reply_all("{\"ok\":false,\"error\":\"the server is shutting down\"}");
    return;
  }
  if (reload.active) {
    mf_log("reload (%s): one is already running; it will answer too", why);
    return;
  }
  mf_log("reloading (%s)", why);
  mf_config_t *next = malloc(sizeof *next);
  if (next == NULL) {
    reload_finish(g, 0, "out of memory");
    return;
  }
  if (reload_config(next, err, sizeof err) != 0) {
    free(next);
    reload_finish(g, 0, err);
    return;
  }
  master_use_config(next);
  reload.active = 1;
  g->rolling = 1;
  reload.index = 0;
  reload_step(g);
}
