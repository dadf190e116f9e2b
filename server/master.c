/* master.c -- the master process: set-up, signals, log files, privileges; it supervises the workers.
 *
 * The master never runs request code: it learns listen()'s options from a probe of the script
 * (script.c), binds (listen.c), then supervises one group of workers (group.c): fork+exec of the same
 * binary once per slot, with the listening socket as MF_FD_LISTEN, its channel as MF_FD_CONTROL and the
 * scoreboard as MF_FD_SCOREBOARD (fds.h), with its entry's index. This file is the workers' kind: what
 * a worker is given, and what follows when one is ready, leaves or is replaced (the mesh and its
 * leader: leader.c; reloads: reload.c; the watchdog tick: watchdog.c; status: status.c). It also owns
 * what concerns the whole server: signals (Unicorn's: TERM/INT stop, HUP reloads, TTIN/TTOU scale,
 * USR1 reopens the logs), the control socket's commands, log files and the workers' user. */
#include "master.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "control.h"
#include "cpuslice.h"
#include "group.h"
#include "leader.h"
#include "listen.h"
#include "log.h"
#include "reload.h"
#include "reuseport.h"
#include "scoreboard.h"
#include "shdict_region.h"
#include "script.h"
#include "status.h"
#include "util.h"
#include "watch.h"
#include "watchdog.h"

static struct {
  uv_loop_t *loop;
  mf_config_t *cli;         /* the command line as given */
  mf_config_t *cfg;         /* what the workers run with (the command line over the script) */
  int listen_fd;
  char url[300];
  char exe[4096];
  char *args[64];           /* the workers' options (config.c) */
  int nargs;
  group_t workers;
  uint64_t started_ms;
  int announced, killing;
  uv_signal_t sig[6];
  uv_timer_t deadline;
  scoreboard_board_t *board;
  int board_fd;
  char control_path[108];
  int uid, gid;             /* for --user / --group, -1 when not set */
} master;

const mf_config_t *master_cli(void) { return master.cli; }

mf_config_t *master_config(void) { return master.cfg; }

int master_announced(void) { return master.announced; }

/* listen()'s shared dicts (shdict_region.c): made at start; a reload adds new ones, and a changed size
 * waits for the next restart (a dict every worker has mapped cannot move). Returns 0 or -1. */
static int master_shared(const mf_config_t *cfg, int reload, char *err, size_t errlen) {
  for (int i = 0; i < cfg->nshared; i++) {
    uint64_t old = 0, want = cfg->shared[i].size;
    int r = shdict_region_add(cfg->shared[i].name, want, &old, err, errlen);
    if (r < 0) return -1;
    if (r == 0) mf_log("%sshared dict %s: %llu bytes", reload ? "reload: new " : "", cfg->shared[i].name,
                       (unsigned long long)want);
    if (r == 2)
      mf_log("reload: shared dict %s keeps its %llu bytes; the new size (%llu) applies at the next restart",
             cfg->shared[i].name, (unsigned long long)old, (unsigned long long)want);
  }
  return 0;
}

void master_use_config(mf_config_t *next) {
  char err[512];
  if (master_shared(next, 1, err, sizeof err) != 0) mf_log("reload: %s", err);
  master.cfg = next;
  for (int i = 0; i < master.nargs; i++) free(master.args[i]);
  master.nargs = mf_config_to_args(next, master.args, (int)MF_ARRAY_SIZE(master.args));
}

static void master_finish(void) {
  mf_log("all workers exited; bye");
  control_server_stop();
  if (master.cli->pid_file) unlink(master.cli->pid_file);
  exit(master.killing ? 1 : 0);
}

/* ---- --reuseport (reuseport.c) ---------------------------------------------------------------- */

/* New connections go to the slots whose worker is ready; while none is, to every slot (they queue). */
static void steer_update(group_t *g) {
  if (!master.cfg->reuseport || g->stopping || g->nslots == 0) return;
  int *slots = malloc((size_t)g->nslots * sizeof *slots), n = 0;
  if (slots == NULL) return;
  for (int i = 0; i < g->nslots; i++)
    if (g->slots[i]->cur && g->slots[i]->cur->state == CHILD_READY) slots[n++] = i;
  if (n == 0)
    for (int i = 0; i < g->nslots; i++) slots[n++] = i;
  reuseport_steer(slots, n, g->nslots);
  free(slots);
}

static int can_take_conn(const child_t *c) {
  return c->state == CHILD_READY && group_child_running(c) && chan_is_open(&c->chan) && c->slot;
}

/* A connection the master accepted from a parked socket goes to a ready worker ("conn" + the fd); the
 * workers take turns. */
static void handoff(int fd) {
  static unsigned turn;
  int ready = 0;
  child_t *pick = NULL;
  for (child_t *c = master.workers.children; c; c = c->next) ready += can_take_conn(c);
  int k = ready ? (int)(turn++ % (unsigned)ready) : -1;
  for (child_t *c = master.workers.children; c && k >= 0; c = c->next)
    if (can_take_conn(c) && k-- == 0) pick = c;
  if (pick == NULL) {
    mf_log("--reuseport: no worker can take a connection from a parked socket: closing it");
    close(fd);
    return;
  }
  chan_send_fd(&pick->chan, &(chan_msg_t){.type = CHAN_CONN}, fd);
}

/* ---- the workers' kind (group.c) ------------------------------------------------------------- */

static int worker_prepare(child_t *c, group_spawn_t *sp, char *err, size_t errlen) {
  int listen_fd = master.cfg->reuseport ? reuseport_fd(c->id - 1, err, errlen) : master.listen_fd;
  if (listen_fd < 0) return -1;
  int sb_index = scoreboard_take(master.board), n = 0;
  if (sb_index == 0) {
    snprintf(err, errlen, "no free scoreboard entry");
    return -1;
  }
  c->data = &master.board->e[sb_index];
  snprintf(sp->text[0], sizeof sp->text[0], "--worker-id=%d", c->id);
  snprintf(sp->text[1], sizeof sp->text[1], "--master-pid=%d", (int)getpid());
  snprintf(sp->text[2], sizeof sp->text[2], "--serial=%ld", c->serial);
  snprintf(sp->text[3], sizeof sp->text[3], "--sb-index=%d", sb_index);
  sp->argv[n++] = master.exe;
  for (int i = 0; i < 4; i++) sp->argv[n++] = sp->text[i];
  for (int i = 0; i < master.nargs; i++) sp->argv[n++] = master.args[i];
  sp->argv[n++] = "--";
  sp->argv[n++] = (char *)master.cfg->script;
  sp->argv[n] = NULL;
  sp->fds[MF_FD_LISTEN] = listen_fd;
  sp->fds[MF_FD_SCOREBOARD] = master.board_fd;
  sp->fds[MF_FD_SHDICT] = shdict_region_fd();
  return 0;
}

static void worker_release(child_t *c) {
  scoreboard_entry_t *sb = c->data;
  if (c->pid > 0 && shdict_region_owner_died(c->pid) > 0) /* it died inside a shared dict operation */
    mf_log("worker %d (pid %d) died holding a shared dict's lock: released; the dict is checked and "
           "repaired by its next user", c->id, c->pid);
  leader_forget(c); /* it still led when the server began to stop */
  if (sb) scoreboard_release(master.board, (int)(sb - master.board->e));
}

static void worker_ready(child_t *c) {
  ((scoreboard_entry_t *)c->data)->state = MF_SB_READY;
  leader_join(c->group, c);
  leader_tell(c);
}

static void worker_leave(child_t *c) { leader_elect(c->group, c); }

/* "repair ID SERIAL": c's mesh stream to that worker was dropped at the cap (mesh.c): a new pair. */
static int worker_message(child_t *c, const chan_msg_t *m) {
  if (m->type != CHAN_REPAIR) return 0;
  leader_repair(c->group, c, (int)m->id, (long)m->serial);
  return 1;
}

/* "listening on ..." once every slot's first worker is ready. */
static void maybe_announce(group_t *g) {
  if (master.announced || g->stopping) return;
  for (int i = 0; i < g->nslots; i++)
    if (!g->slots[i]->cur || g->slots[i]->cur->state != CHILD_READY) return;
  char pids[1024];
  size_t n = 0;
  pids[0] = '\0';
  for (int i = 0; i < g->nslots && n < sizeof pids - 16; i++)
    n += (size_t)snprintf(pids + n, sizeof pids - n, "%s%d", i ? ", " : "", g->slots[i]->cur->pid);
  mf_log("listening on %s with %d workers (pids %s)", master.url, g->nslots, pids);
  master.announced = 1;
}

static void workers_changed(group_t *g) {
  steer_update(g); /* a dead worker's socket keeps what is queued there for the next worker */
  maybe_announce(g);
  leader_settle(g, master.announced);
}

static void workers_gone(group_t *g) {
  (void)g;
  master_finish();
}

static const group_kind_t worker_kind = {
    .name = "worker",
    .prepare = worker_prepare,
    .release = worker_release,
    .on_ready = worker_ready,
    .on_leave = worker_leave,
    .on_change = workers_changed,
    .on_replaced = reload_replaced,
    .on_empty = workers_gone,
    .on_message = worker_message,
};

/* ---- scaling --------------------------------------------------------------------------------- */

static int master_scale(int n, char *msg, size_t msglen) {
  int old = master.workers.nslots;
  if (n < 1 || n > CHAN_MAX_ID) {
    snprintf(msg, msglen, "the worker count must be from 1 to %d", CHAN_MAX_ID);
    return -1;
  }
  if (reload_active()) {
    snprintf(msg, msglen, "a reload is running; scale after it");
    return -1;
  }
  if (group_resize(&master.workers, n) != 0) {
    snprintf(msg, msglen, "out of memory");
    return -1;
  }
  master.cfg->workers = n;
  mf_log("scaled from %d to %d workers", old, n);
  snprintf(msg, msglen, "%d workers (was %d)", n, old);
  return 0;
}

/* ---- shutdown, log files, signals ------------------------------------------------------------ */

static void on_deadline(uv_timer_t *t) {
  (void)t;
  mf_log("workers still running after the grace period: killing them");
  group_kill(&master.workers, SIGKILL);
}

static void master_shutdown(const char *why) {
  group_t *g = &master.workers;
  if (g->stopping) {
    mf_log("second %s: killing workers now", why);
    master.killing = 1;
    group_kill(g, SIGKILL);
    if (group_live(g) == 0) master_finish();
    return;
  }
  group_stop(g);
  mf_log("shutting down (%s): draining workers for up to %g s", why, (double)master.cfg->grace_ms / 1000.0);
  reload_abort(g, "the server is shutting down");
  if (master.cfg->reuseport)
    reuseport_close_all(); /* master.listen_fd is among them */
  else
    close(master.listen_fd); /* the workers keep their copies until they have drained */
  master.listen_fd = -1;
  watch_stop();
  group_kill(g, SIGTERM);
  if (group_live(g) == 0) master_finish();
  /* Workers enforce --grace themselves; this is the backstop if one cannot. */
  uv_timer_init(master.loop, &master.deadline);
  uv_timer_start(&master.deadline, on_deadline, master.cfg->grace_ms + 2000, 0);
}

/* Opens `path` for appending and, when workers run as another user, gives it to them. */
static int open_log(const char *path) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0 && (master.uid >= 0 || master.gid >= 0)) {
    if (fchown(fd, master.uid >= 0 ? (uid_t)master.uid : (uid_t)-1,
               master.gid >= 0 ? (gid_t)master.gid : (gid_t)-1) != 0)
      mf_log("cannot give %s to the workers' user: %s", path, strerror(errno));
  }
  return fd;
}

/* Opens (creates) the log files; the error log becomes our stderr. Returns 0, or -1 with err set. */
static int open_logs(const mf_config_t *cfg, char *err, size_t errlen) {
  if (cfg->error_log) {
    int fd = open_log(cfg->error_log);
    if (fd < 0) {
      snprintf(err, errlen, "cannot open --error-log %s: %s", cfg->error_log, strerror(errno));
      return -1;
    }
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  if (cfg->access_log) {
    int fd = open_log(cfg->access_log);
    if (fd < 0) {
      snprintf(err, errlen, "cannot open --access-log %s: %s", cfg->access_log, strerror(errno));
      return -1;
    }
    close(fd);
  }
  return 0;
}

static void reopen_logs(void) {
  char err[512];
  open_logs(master.cli, err, sizeof err); /* as at start-up; a file that cannot be opened keeps the old one */
  mf_log("log files reopened");
  group_kill(&master.workers, SIGUSR1);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  char msg[256];
  int n = master.workers.nslots;
  switch (signum) {
    case SIGTERM: master_shutdown("SIGTERM"); break;
    case SIGINT: master_shutdown("SIGINT"); break;
    case SIGHUP: reload_start(&master.workers, "SIGHUP", NULL); break;
    case SIGTTIN: master_scale(n + 1, msg, sizeof msg); break;
    case SIGTTOU:
      if (n > 1) master_scale(n - 1, msg, sizeof msg);
      else mf_log("SIGTTOU: already at one worker");
      break;
    case SIGUSR1: reopen_logs(); break;
  }
}

/* ---- the control socket's commands (control.c) ----------------------------------------------- */

static void master_status(mf_buf_t *b) {
  status_master_t m = {
      .pid = (int)getpid(),
      .uptime = (double)(uv_now(master.loop) - master.started_ms) / 1000.0,
      .url = master.url,
      .restarts = master.workers.restarts,
      .reloading = reload_active(),
      .reuseport = (int)master.cfg->reuseport,
  };
  status_json(b, &m, &master.workers);
}

/* "scale N": the whole of N must be a count ("2abc" is not 2). */
static void control_scale(control_conn_t *conn, const char *arg, mf_buf_t *b) {
  char msg[256];
  long n;
  int r = -1;
  if (mf_parse_int(arg, 1, 1024, &n) != 0)
    snprintf(msg, sizeof msg, "scale needs a worker count from 1 to 1024, not '%.64s'", arg);
  else
    r = master_scale((int)n, msg, sizeof msg);
  status_reply(b, r == 0, r == 0 ? "message" : "error", msg);
  control_reply(conn, b->data);
}

static void on_control(control_conn_t *conn, const char *line) {
  mf_buf_t b;
  mf_buf_init(&b);
  if (strcmp(line, "status") == 0) {
    master_status(&b);
    control_reply(conn, b.data);
  } else if (strcmp(line, "reload") == 0) {
    reload_start(&master.workers, "control socket", conn);
  } else if (strcmp(line, "hello") == 0) { /* the client checks whom it reached (control.c) */
    mf_buf_appendf(&b, "{\"ok\":true,\"hello\":\"moonfork\",\"pid\":%d,\"port\":%ld}", (int)getpid(),
                   master.cfg->port);
    mf_buf_append(&b, "", 1); /* (appendf leaves no terminator) */
    control_reply(conn, b.data);
  } else if (strncmp(line, "scale ", 6) == 0) {
    control_scale(conn, line + 6, &b);
  } else if (strcmp(line, "stop") == 0) {
    control_reply(conn, "{\"ok\":true,\"message\":\"stopping\"}");
    master_shutdown("stop command");
  } else {
    mf_buf_t m;
    mf_buf_init(&m);
    mf_buf_appendf(&m, "unknown command '%s' (status, reload, scale N, stop)", line);
    status_reply(&b, 0, "error", m.data);
    control_reply(conn, b.data);
    mf_buf_free(&m);
  }
  mf_buf_free(&b);
}

static void on_watch(void) { reload_start(&master.workers, "--watch: a .lua file changed", NULL); }

/* ---- set-up ---------------------------------------------------------------------------------- */

/* --user / --group into master.uid / master.gid. Returns 0, or -1 with err set. */
static int resolve_user(const mf_config_t *cfg, char *err, size_t errlen) {
  struct passwd *pw = cfg->user ? getpwnam(cfg->user) : NULL;
  struct group *gr = cfg->group ? getgrnam(cfg->group) : NULL;
  master.uid = master.gid = -1;
  if (cfg->user && pw == NULL) {
    snprintf(err, errlen, "unknown user '%s'", cfg->user);
    return -1;
  }
  if (cfg->group && gr == NULL) {
    snprintf(err, errlen, "unknown group '%s'", cfg->group);
    return -1;
  }
  if (pw) {
    master.uid = (int)pw->pw_uid;
    master.gid = (int)pw->pw_gid; /* the user's group, unless --group says another */
  }
  if (gr) master.gid = (int)gr->gr_gid;
  if ((master.uid >= 0 || master.gid >= 0) && geteuid() != 0) {
    snprintf(err, errlen, "--user and --group need the master to run as root");
    return -1;
  }
  return 0;
}

/* Binds, finds our executable, opens the log files and writes the pid file. Returns 0 or -1. */
static int master_open(mf_config_t *cfg, char *err, size_t errlen) {
  size_t size = sizeof master.exe;
  master.cfg = cfg;
  master.listen_fd = listen_bind(cfg, master.url, sizeof master.url, err, errlen);
  if (master.listen_fd < 0) return -1;
  master.cli->port = cfg->port; /* a reload keeps the port we have (0 became a real one) */
  if (uv_exepath(master.exe, &size) != 0) {
    snprintf(err, errlen, "cannot find my own executable");
    return -1;
  }
  if (open_logs(cfg, err, errlen) != 0) return -1;
  if (cfg->pid_file) {
    FILE *f = fopen(cfg->pid_file, "w");
    if (f == NULL) {
      snprintf(err, errlen, "cannot write --pid-file %s: %s", cfg->pid_file, strerror(errno));
      return -1;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
  }
  return 0;
}

/* The workers' options, the scoreboard, the loop and --reuseport's sockets. Returns 0 or -1. */
static int master_prepare(mf_config_t *cfg, char *err, size_t errlen) {
  master.nargs = mf_config_to_args(cfg, master.args, (int)MF_ARRAY_SIZE(master.args));
  master.board_fd = scoreboard_create(&master.board);
  if (master.board_fd < 0) {
    snprintf(err, errlen, "cannot create the scoreboard: %s", strerror(errno));
    return -1;
  }
  if (shdict_region_create(err, errlen) < 0 || master_shared(cfg, 0, err, errlen) != 0) return -1;
  master.loop = uv_default_loop();
  if (cfg->reuseport && reuseport_init(master.loop, master.listen_fd, handoff, err, errlen) != 0) return -1;
  master.started_ms = uv_now(master.loop);
  return 0;
}

static void master_greet(const mf_config_t *cfg) {
  mf_log("moonfork %s starting: %ld workers", MOONFORK_VERSION, cfg->workers);
  if (cfg->sched_slice_us > 0 && cpuslice_get() == 0)
    mf_log("note: no per-task CPU time slices here (they need Linux 6.12+ and a fair-share policy): "
           "workers keep --sched-slice only by yielding the CPU");
  if (geteuid() == 0 && master.uid < 0)
    mf_log("warning: running as root without --user: the workers (your Lua code) run as root too");
}

/* The control socket, signals and --watch: what reaches the master from outside. */
static void master_listen(const mf_config_t *cfg) {
  char err[1024];
  static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1};
  if (control_path(cfg->control, cfg->port, 1, master.control_path, sizeof master.control_path, err, sizeof err) != 0 ||
      control_server_start(master.loop, master.control_path, on_control, err, sizeof err) != 0)
    mf_log("warning: no control socket: %s", err);
  else
    mf_log("control socket: %s", master.control_path);
  for (size_t i = 0; i < MF_ARRAY_SIZE(sigs); i++) {
    uv_signal_init(master.loop, &master.sig[i]);
    uv_signal_start(&master.sig[i], on_signal, sigs[i]);
  }
  if (cfg->watch && watch_start(master.loop, cfg->script, on_watch, err, sizeof err) != 0)
    mf_log("warning: --watch: %s", err);
}

static int master_fail(const char *err, int status) {
  fprintf(stderr, "moonfork: %s\n", err);
  return status;
}

int master_run(mf_config_t *cfg) {
  char err[1024];
  mf_log_set_role(0);
  signal(SIGPIPE, SIG_IGN);
  master.cli = malloc(sizeof *master.cli);
  if (master.cli == NULL) return 1;
  *master.cli = *cfg;
  if (mf_script_probe(cfg, err, sizeof err) != 0) return master_fail(err, 1);
  if (resolve_user(cfg, err, sizeof err) != 0) return master_fail(err, 2);
  if (master_open(cfg, err, sizeof err) != 0 || master_prepare(cfg, err, sizeof err) != 0)
    return master_fail(err, 1);
  master_greet(cfg);
  master_listen(cfg);
  group_init(&master.workers, master.loop, &worker_kind, master.exe);
  master.workers.uid = master.uid;
  master.workers.gid = master.gid;
  leader_init(&master.workers);
  watchdog_start(&master.workers);
  if (group_resize(&master.workers, (int)cfg->workers) != 0) return master_fail("out of memory", 1);
  uv_run(master.loop, UV_RUN_DEFAULT);
  return 0;
}
