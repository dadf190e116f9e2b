/* group.h -- a supervised group of child processes: slots, spawning, backoff, exits, replacement, scaling. */
#ifndef MOONFORK_GROUP_H
#define MOONFORK_GROUP_H

#include <stdint.h>
#include <uv.h>

#include "chan.h"
#include "fds.h"

typedef struct group_s group_t;
typedef struct group_slot_s group_slot_t;
typedef struct child_s child_t;

enum child_state { CHILD_STARTING, CHILD_READY, CHILD_DRAINING };

/* One child process. The group owns it: it is freed once its process handle and its channel have both
 * closed (handles_open, the one count of its lifetime), after the kind's release hook. */
struct child_s {
  group_t *group;
  group_slot_t *slot;       /* NULL once retired */
  int id;                   /* its slot's id */
  long serial;              /* the group's spawn count: a later child has a higher one */
  int pid;
  enum child_state state;
  uint64_t started_ms;
  uv_process_t proc;
  chan_t chan;              /* the child's end is MF_FD_CONTROL */
  int handles_open;         /* proc and chan */
  int recycling;            /* a replacement was started for it */
  char recycle_why[96];     /* it asked to be replaced: retried (group_recycle) until it is */
  char error[CHAN_LINE_MAX]; /* the last "error" line it sent */
  void *data;               /* the kind's (a worker's scoreboard entry) */
  child_t *next;
};

/* A place for one child (ids 1..N): its child may die (it is respawned after a backoff) or be replaced
 * (a new child starts, and the old one is retired once the new one is ready). */
struct group_slot_s {
  group_t *group;
  int id;
  child_t *cur;             /* the child serving this slot */
  child_t *next;            /* its replacement, starting */
  uint64_t backoff_ms;
  uint64_t last_start_ms;
  uv_timer_t respawn;
  int removed;
};

/* What the kind gives a new child: its argv (NULL-terminated; strings the kind makes may live in
 * `text`) and fds[i], the descriptor it finds as i (>= 3; -1 leaves it closed). */
typedef struct {
  char *argv[96];
  char text[8][48];
  int fds[MF_FD_COUNT];
} group_spawn_t;

/* A kind of child: its name in log lines and its hooks. Every hook but on_message is required. */
typedef struct {
  const char *name; /* "worker" */
  /* Fills sp for c. Returns 0, or -1 with the reason it cannot start in err. */
  int (*prepare)(child_t *c, group_spawn_t *sp, char *err, size_t errlen);
  /* Undoes a successful prepare: the child is gone. */
  void (*release)(child_t *c);
  /* c said "ready" and now serves its slot (before the child it replaces is retired). */
  void (*on_ready)(child_t *c);
  /* c left service, once: retired, or its process exited (not called while the group stops). */
  void (*on_leave)(child_t *c);
  /* The set of serving children changed (a ready child, an exit, a resize). */
  void (*on_change)(group_t *g);
  /* The replacement started for slot s became ready (ok) or failed (why). */
  void (*on_replaced)(group_t *g, group_slot_t *s, int ok, const char *why);
  /* The group stops and its last child exited. */
  void (*on_empty)(group_t *g);
  /* A message the group does not handle itself came from c: returns 1 when the kind took it (may be
   * NULL: none). */
  int (*on_message)(child_t *c, const chan_msg_t *m);
} group_kind_t;

struct group_s {
  uv_loop_t *loop;
  const group_kind_t *kind;
  const char *exe;
  int uid, gid;             /* to run children as (-1: unchanged) */
  group_slot_t **slots;
  int nslots;
  child_t *children;        /* every child process not yet freed, newest first */
  long serial;
  uint64_t restarts;        /* children that died while serving */
  int rolling;              /* a rolling replacement (reload) runs: retire as "reload", recycle later */
  int stopping;             /* no respawn, no replacement */
};

/* Sets up an empty group (group_resize gives it slots and starts their children). */
void group_init(group_t *g, uv_loop_t *loop, const group_kind_t *kind, const char *exe);
/* Starts a child for slot s: its first, a respawn, or (when s->cur serves) its replacement. */
void group_spawn(group_slot_t *s);
/* Replaces c (when nothing else replaces its slot and no rolling replacement runs), logging why. */
void group_recycle(child_t *c, const char *why);
/* Takes c out of service: "retire" (it stops taking work and drains). */
void group_retire(child_t *c, const char *why);
/* Grows or shrinks to n slots (removed slots' children are retired). Returns 0 or UV_ENOMEM. */
int group_resize(group_t *g, int n);
/* No more respawns or replacements: the group is stopping. */
void group_stop(group_t *g);
/* Sends signum to every running child. */
void group_kill(group_t *g, int signum);
/* Running children (started and not yet exited). */
int group_live(const group_t *g);
/* Is c's process running? */
int group_child_running(const child_t *c);

#endif
