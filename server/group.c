/* group.c -- a supervised group of child processes: slots, spawning, backoff, exits, replacement, scaling.
 *
 * The master supervises its children by groups; the workers are one group, and later kinds of child
 * (job processes) are others. A group knows nothing of what its children do: a kind gives the argv and
 * descriptors of a new child and hooks for what follows (group.h). Each child is fork+exec'ed by libuv
 * (whose process handles reap every child: no zombies) with one end of a socketpair as MF_FD_CONTROL,
 * its channel to the master (chan.c).
 *
 * A slot is a place for one child (ids 1..N). Its child may die: it is respawned after a backoff of
 * 100 ms, doubling on each death that comes quickly, up to 30 s, and back to 100 ms once a child has
 * stayed up for 60 s. It may be replaced (reload, recycling): a new child is started for the slot, and
 * only once it says "ready" is the old one retired (it stops accepting and drains), so the slot always
 * has a child serving. */
#define _GNU_SOURCE /* sigabbrev_np */
#include "group.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000

/* ---- a child's lifetime: one count of open handles ------------------------------------------- */

static void child_unref(child_t *c) {
  if (--c->handles_open > 0) return;
  group_t *g = c->group;
  child_t **pp = &g->children;
  while (*pp && *pp != c) pp = &(*pp)->next;
  if (*pp) *pp = c->next;
  g->kind->release(c);
  free(c);
}

static void on_proc_closed(uv_handle_t *h) { child_unref(h->data); }

static void on_chan_closed(uv_handle_t *h) { child_unref(mf_container_of(h, child_t, chan.pipe)); }

int group_child_running(const child_t *c) {
  return c->handles_open > 0 && !uv_is_closing((const uv_handle_t *)&c->proc);
}

int group_live(const group_t *g) {
  int n = 0;
  for (const child_t *c = g->children; c; c = c->next) n += group_child_running(c);
  return n;
}

void group_kill(group_t *g, int signum) {
  for (child_t *c = g->children; c; c = c->next)
    if (group_child_running(c)) uv_process_kill(&c->proc, signum);
}

/* ---- service: ready, retired, replaced ------------------------------------------------------- */

void group_retire(child_t *c, const char *why) {
  if (c->state == CHILD_DRAINING) return;
  mf_log("retiring %s %d (pid %d): %s", c->group->kind->name, c->id, c->pid, why);
  c->state = CHILD_DRAINING;
  if (c->slot && c->slot->cur == c) c->slot->cur = NULL; /* no slot keeps a pointer to it */
  c->slot = NULL;
  chan_send(&c->chan, &(chan_msg_t){.type = CHAN_RETIRE});
  c->group->kind->on_leave(c);
}

static void child_ready(child_t *c) {
  group_t *g = c->group;
  group_slot_t *s = c->slot;
  child_t *old = NULL;
  int replacing = s && s->next == c;
  c->state = CHILD_READY;
  mf_log("%s %d (pid %d) ready", g->kind->name, c->id, c->pid);
  if (replacing) {
    old = s->cur;
    s->cur = c;
    s->next = NULL;
  }
  g->kind->on_ready(c);
  if (old) group_retire(old, g->rolling ? "reload" : "replaced");
  if (replacing) g->kind->on_replaced(g, s, 1, NULL);
  g->kind->on_change(g);
}

void group_recycle(child_t *c, const char *why) {
  group_slot_t *s = c->slot;
  group_t *g = c->group;
  if (c->recycling || s == NULL || s->cur != c || s->next || g->rolling || g->stopping) return;
  c->recycling = 1;
  mf_log("%s %d (pid %d) %s: starting its replacement", g->kind->name, c->id, c->pid, why);
  group_spawn(s);
}

static void on_chan_msg(chan_t *ch, const chan_msg_t *m) {
  child_t *c = ch->data;
  switch (m->type) {
    case CHAN_READY: child_ready(c); break;
    case CHAN_ERROR: snprintf(c->error, sizeof c->error, "%s", m->text); break;
    case CHAN_RECYCLE: /* it reached --max-requests (see worker.c) */
      snprintf(c->recycle_why, sizeof c->recycle_why, "served %llu requests (--max-requests)",
               (unsigned long long)m->count);
      if (c->state == CHILD_READY) group_recycle(c, c->recycle_why); /* else on a tick (watchdog.c) */
      break;
    default:
      if (c->group->kind->on_message && c->group->kind->on_message(c, m)) break;
      mf_log("%s %d (pid %d) sent an unknown control message '%s'", c->group->kind->name, c->id, c->pid,
             m->type == CHAN_BAD ? m->text : chan_name(m->type));
  }
}

static void on_chan_eof(chan_t *ch, int status) {
  (void)status;
  chan_close(ch, on_chan_closed);
}

/* ---- exits and respawns ---------------------------------------------------------------------- */

static void on_respawn(uv_timer_t *t) {
  group_slot_t *s = t->data;
  if (s->group->stopping || s->removed || s->cur) return;
  group_spawn(s);
}

static void slot_schedule_respawn(group_slot_t *s, const char *what) {
  uint64_t up = uv_now(s->group->loop) - s->last_start_ms;
  if (s->backoff_ms == 0 || up >= STABLE_MS)
    s->backoff_ms = BACKOFF_MIN_MS;
  else
    s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
  mf_log("%s; respawning in %llu ms", what, (unsigned long long)s->backoff_ms);
  uv_timer_start(&s->respawn, on_respawn, s->backoff_ms, 0);
}

/* A child of slot s could not start: respawn the slot later, or end its replacement. */
static void slot_start_failed(group_slot_t *s, const char *what) {
  if (!s->cur) slot_schedule_respawn(s, what);
  else s->group->kind->on_replaced(s->group, s, 0, what);
}

static void child_exited(child_t *c, int sig, const char *what) {
  group_t *g = c->group;
  group_slot_t *s = c->slot;
  if (g->stopping) {
    mf_log("%s", what);
    if (group_live(g) == 0) g->kind->on_empty(g);
  } else if (s && s->next == c) { /* a replacement that never became ready */
    char why[1024];
    s->next = NULL;
    mf_log("%s before it was ready", what);
    snprintf(why, sizeof why, "the new %s %d failed to start: %s", g->kind->name, c->id,
             c->error[0] ? c->error : (sig ? "killed" : "exited"));
    g->kind->on_replaced(g, s, 0, why);
  } else if (s && s->cur == c) {
    s->cur = NULL;
    g->restarts++;
    g->kind->on_change(g);
    if (s->removed) mf_log("%s", what);
    else slot_schedule_respawn(s, what);
  } else {
    mf_log("%s (retired)", what);
  }
}

static void on_child_exit(uv_process_t *p, int64_t status, int sig) {
  child_t *c = p->data;
  group_t *g = c->group;
  char what[768];
  int serving = c->state != CHILD_DRAINING; /* a retired child has left already */
  c->state = CHILD_DRAINING;
  uv_close((uv_handle_t *)p, on_proc_closed);
  if (serving && !g->stopping) g->kind->on_leave(c);
  chan_close(&c->chan, on_chan_closed);
  if (sig != 0) {
    const char *name = sigabbrev_np(sig);
    snprintf(what, sizeof what, "%s %d (pid %d) killed by signal %d (SIG%s)", g->kind->name, c->id, c->pid,
             sig, name ? name : "?");
  } else {
    snprintf(what, sizeof what, "%s %d (pid %d) exited with status %d", g->kind->name, c->id, c->pid,
             (int)status);
  }
  child_exited(c, sig, what);
}

/* ---- spawning: new -> argv -> stdio -> spawn -> attach ---------------------------------------- */

static child_t *child_new(group_slot_t *s) {
  child_t *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->group = s->group;
  c->id = s->id;
  c->slot = s;
  c->state = CHILD_STARTING;
  c->serial = ++s->group->serial;
  c->started_ms = uv_now(s->group->loop);
  s->last_start_ms = c->started_ms;
  return c;
}

/* What the kind gives the child, and the channel's socketpair (sv[1] is the child's end). */
static int child_argv(child_t *c, group_spawn_t *sp, int sv[2], char *err, size_t errlen) {
  const group_kind_t *kind = c->group->kind;
  char why[384] = "";
  memset(sp->argv, 0, sizeof sp->argv);
  for (int i = 0; i < MF_FD_COUNT; i++) sp->fds[i] = -1;
  if (kind->prepare(c, sp, why, sizeof why) != 0) goto fail;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    snprintf(why, sizeof why, "%s", strerror(errno));
    kind->release(c);
    goto fail;
  }
  sp->fds[MF_FD_CONTROL] = sv[1];
  return 0;
fail:
  snprintf(err, errlen, "cannot start %s %d: %s", kind->name, c->id, why);
  return -1;
}

static void child_stdio(const group_spawn_t *sp, uv_stdio_container_t *stdio) {
  stdio[0].flags = UV_IGNORE;
  for (int i = 1; i < MF_FD_COUNT; i++) {
    int fd = i < 3 ? i : sp->fds[i];
    stdio[i].flags = fd < 0 ? UV_IGNORE : UV_INHERIT_FD;
    stdio[i].data.fd = fd;
  }
}

/* Forks and execs; either way the child is in the group's list with its process handle counted. */
static int child_spawn(child_t *c, group_spawn_t *sp) {
  group_t *g = c->group;
  uv_stdio_container_t stdio[MF_FD_COUNT];
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  child_stdio(sp, stdio);
  o.exit_cb = on_child_exit;
  o.file = g->exe;
  o.args = sp->argv;
  o.stdio = stdio;
  o.stdio_count = MF_FD_COUNT;
  if (g->uid >= 0) {
    o.flags |= UV_PROCESS_SETUID;
    o.uid = (uv_uid_t)g->uid;
  }
  if (g->gid >= 0) {
    o.flags |= UV_PROCESS_SETGID;
    o.gid = (uv_gid_t)g->gid;
  }
  int r = uv_spawn(g->loop, &c->proc, &o);
  c->proc.data = c;
  c->handles_open = 1;
  c->next = g->children;
  g->children = c;
  return r;
}

/* The child runs: it takes its place in the slot, and its channel opens on our end (fd). */
static void child_attach(child_t *c, int fd) {
  group_slot_t *s = c->slot;
  c->pid = c->proc.pid;
  if (s->cur == NULL) s->cur = c;
  else s->next = c;
  c->handles_open++;
  if (chan_open(&c->chan, c->group->loop, fd, on_chan_msg, on_chan_eof, c) != 0)
    chan_close(&c->chan, on_chan_closed);
}

void group_spawn(group_slot_t *s) {
  char what[512];
  int sv[2];
  group_spawn_t sp;
  child_t *c = child_new(s);
  if (c == NULL) return;
  if (child_argv(c, &sp, sv, what, sizeof what) != 0) {
    free(c);
    slot_start_failed(s, what);
    return;
  }
  int r = child_spawn(c, &sp);
  close(sv[1]);
  if (r != 0) {
    close(sv[0]);
    c->slot = NULL;
    uv_close((uv_handle_t *)&c->proc, on_proc_closed);
    snprintf(what, sizeof what, "cannot start %s %d: %s", s->group->kind->name, s->id, uv_strerror(r));
    slot_start_failed(s, what);
    return;
  }
  child_attach(c, sv[0]);
}

/* ---- slots and scaling ----------------------------------------------------------------------- */

static void slot_free(uv_handle_t *h) { free(mf_container_of(h, group_slot_t, respawn)); }

static group_slot_t *slot_new(group_t *g, int id) {
  group_slot_t *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->group = g;
  s->id = id;
  uv_timer_init(g->loop, &s->respawn);
  s->respawn.data = s;
  uv_unref((uv_handle_t *)&s->respawn);
  return s;
}

static int group_grow(group_t *g, int n) {
  group_slot_t **ns = realloc(g->slots, (size_t)n * sizeof *ns);
  if (ns == NULL) return UV_ENOMEM;
  g->slots = ns;
  for (int i = g->nslots; i < n; i++) {
    g->slots[i] = slot_new(g, i + 1);
    if (g->slots[i] == NULL) return UV_ENOMEM;
    g->nslots = i + 1;
    group_spawn(g->slots[i]);
  }
  g->kind->on_change(g);
  return 0;
}

static void group_shrink(group_t *g, int n) {
  int was = g->nslots;
  g->nslots = n;
  g->kind->on_change(g); /* first: nothing new goes to a slot about to be removed */
  for (int i = n; i < was; i++) {
    group_slot_t *s = g->slots[i];
    s->removed = 1;
    uv_timer_stop(&s->respawn);
    uv_close((uv_handle_t *)&s->respawn, slot_free);
    if (s->cur) group_retire(s->cur, "scaled down");
    if (s->next) {
      s->next->slot = NULL;
      uv_process_kill(&s->next->proc, SIGTERM);
    }
  }
}

int group_resize(group_t *g, int n) {
  if (n > g->nslots) return group_grow(g, n);
  group_shrink(g, n);
  return 0;
}

void group_init(group_t *g, uv_loop_t *loop, const group_kind_t *kind, const char *exe) {
  memset(g, 0, sizeof *g);
  g->loop = loop;
  g->kind = kind;
  g->exe = exe;
  g->uid = g->gid = -1;
}

void group_stop(group_t *g) {
  g->stopping = 1;
  for (int i = 0; i < g->nslots; i++) uv_timer_stop(&g->slots[i]->respawn);
}
