/* master.c -- the master process: binds the socket, starts and supervises workers, reloads, signals.
 *
 * The master never runs request code: it learns listen()'s options from a probe of the script
 * (script.c), binds, then fork+execs the same binary once per worker slot with the listening socket as
 * fd 3, its end of a socketpair as fd 4 (the control channel: the worker says "ready" there, the master
 * says "stop" or "retire") and the scoreboard as fd 5 (scoreboard.c), with its entry's index. libuv's process handles reap
 * every child, so there are no zombies.
 *
 * A slot is a place for one worker (ids 1..N). Its worker may die: it is respawned after a backoff of
 * 100 ms, doubling on each death that comes quickly, up to 30 s, and back to 100 ms once a worker has
 * stayed up for 60 s. It may be replaced (reload, recycling): a new worker is started for the slot,
 * and only once it says "ready" is the old one retired (it stops accepting and drains), so the slot
 * always has a worker accepting. A reload replaces the slots one at a time, after probing the new
 * script: a script that fails to load aborts it and the old workers keep serving.
 *
 * The master also names the mesh's leader, so workers never have to agree on one from partial views
 * (a worker may take requests before all its peer sockets have arrived). Once the first workers are
 * all ready (or 5 s have passed) the oldest ready worker leads; leadership then only moves when the
 * leader dies or is retired, to the oldest ready worker, with a higher epoch. Each worker hears
 * "leader ID SERIAL EPOCH" on its control channel, after the peer sockets it was sent. */
#define _GNU_SOURCE
#include "master.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "control.h"
#include "cpuslice.h"
#include "log.h"
#include "scoreboard.h"
#include "reuseport.h"
#include "script.h"
#include "util.h"
#include "watch.h"
#include "worker.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000
#define START_TIMEOUT_MS 60000 /* a replacement that is not ready by then is given up */

typedef struct slot_s slot_t;

enum wstate { W_STARTING, W_READY, W_DRAINING };

typedef struct mworker_s {
  int id;
  long serial;
  int pid;
  enum wstate state;
  slot_t *slot;             /* NULL once retired */
  uv_process_t proc;
  uv_pipe_t ctl;
  int ctl_open;             /* 1 open, 2 closing, 0 closed */
  int proc_open;
  int running;
  uint64_t started_ms;
  int recycling;            /* a replacement was asked for */
  char recycle_why[96];     /* the worker asked to be replaced: retried on each tick until it is */
  mf_scoreboard_t *sb;      /* its entry in M.board */
  int sb_index;
  char line[512];
  size_t line_len;
  char error[512];          /* the last "error" line it sent */
  struct mworker_s *next;
} mworker_t;

struct slot_s {
  int id;
  mworker_t *cur;           /* the worker serving this slot */
  mworker_t *next;          /* its replacement, starting */
  uint64_t backoff_ms;
  uint64_t last_start_ms;
  uv_timer_t respawn;
  int removed;
};

typedef struct reply_s {
  control_conn_t *conn;
  struct reply_s *next;
} reply_t;

static struct {
  uv_loop_t *loop;
  mf_config_t *cli;         /* the command line as given */
  mf_config_t *cfg;         /* what the workers run with (the command line over the script) */
  int listen_fd;
  char url[300];
  char exe[4096];
  char *args[64];
  int nargs;
  slot_t **slots;
  int nslots;
  mworker_t *workers;       /* every live worker process */
  long serial;
  uint64_t restarts;
  uint64_t started_ms;
  int announced, shutting_down, killing;
  mworker_t *leader;
  long epoch;
  uv_signal_t sig[6];
  uv_timer_t deadline, tick;
  mf_board_t *board;
  int board_fd;
  char control_path[108];
  int uid, gid;             /* for --user / --group, -1 when not set */
  struct {
    int active;
    int index;              /* the slot being replaced */
    reply_t *waiting;       /* control clients to answer when it ends */
    char error[1024];
  } reload;
} M;

static void slot_spawn(slot_t *s);
static void reload_step(void);
static void reload_finish(int ok, const char *error);

/* ---- binding --------------------------------------------------------------------------------- */

static int master_bind(mf_config_t *cfg, char *err, size_t errlen) {
  struct addrinfo hints, *res = NULL;
  char port[16];
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  snprintf(port, sizeof port, "%ld", cfg->port);
  int r = getaddrinfo(cfg->host, port, &hints, &res);
  if (r != 0) {
    snprintf(err, errlen, "cannot listen on %s:%ld: %s", cfg->host, cfg->port, gai_strerror(r));
    return -1;
  }
  int fd = -1, e = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      e = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (cfg->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      e = errno;
      close(fd);
      fd = -1;
      continue;
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 511) == 0) break;
    e = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    snprintf(err, errlen, "cannot listen on %s:%ld: %s", cfg->host, cfg->port,
             uv_strerror(uv_translate_sys_error(e)));
    return -1;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char ip[64] = "?";
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET6) {
      cfg->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
      snprintf(M.url, sizeof M.url, "http://[%s]:%ld", ip, cfg->port);
    } else {
      cfg->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
      snprintf(M.url, sizeof M.url, "http://%s:%ld", ip, cfg->port);
    }
  }
  return fd;
}

/* ---- workers --------------------------------------------------------------------------------- */

static int live_workers(void) {
  int n = 0;
  for (mworker_t *w = M.workers; w; w = w->next) n += w->running;
  return n;
}

static void master_finish(void) {
  mf_log("all workers exited; bye");
  control_server_stop();
  if (M.cli->pid_file) unlink(M.cli->pid_file);
  exit(M.killing ? 1 : 0);
}

static void maybe_announce(void) {
  if (M.announced || M.shutting_down) return;
  for (int i = 0; i < M.nslots; i++)
    if (!M.slots[i]->cur || M.slots[i]->cur->state != W_READY) return;
  char pids[1024];
  size_t n = 0;
  pids[0] = '\0';
  for (int i = 0; i < M.nslots && n < sizeof pids - 16; i++)
    n += (size_t)snprintf(pids + n, sizeof pids - n, "%s%d", i ? ", " : "", M.slots[i]->cur->pid);
  mf_log("listening on %s with %d workers (pids %s)", M.url, M.nslots, pids);
  M.announced = 1;
}

typedef struct {
  uv_write_t req;
  uv_pipe_t handle;
  char msg[64];
} peer_send_t;

static void on_peer_handle_closed(uv_handle_t *h) { free(mf_container_of(h, peer_send_t, handle)); }

static void on_peer_sent(uv_write_t *req, int status) {
  peer_send_t *ps = mf_container_of(req, peer_send_t, req);
  (void)status; /* a failed send means that worker is gone: its exit is handled elsewhere */
  uv_close((uv_handle_t *)&ps->handle, on_peer_handle_closed);
}

/* Sends "peer ID SERIAL" with `fd` attached to worker w; the fd is ours to close either way. */
static int send_peer(mworker_t *w, const mworker_t *peer, int fd) {
  peer_send_t *ps = malloc(sizeof *ps);
  if (ps == NULL) {
    close(fd);
    return -1;
  }
  uv_pipe_init(M.loop, &ps->handle, 0);
  if (uv_pipe_open(&ps->handle, fd) != 0) {
    close(fd);
    uv_close((uv_handle_t *)&ps->handle, on_peer_handle_closed);
    return -1;
  }
  int n = snprintf(ps->msg, sizeof ps->msg, "peer %d %ld\n", peer->id, peer->serial);
  uv_buf_t b = uv_buf_init(ps->msg, (unsigned)n);
  if (uv_write2(&ps->req, (uv_stream_t *)&w->ctl, &b, 1, (uv_stream_t *)&ps->handle, on_peer_sent) != 0) {
    uv_close((uv_handle_t *)&ps->handle, on_peer_handle_closed);
    return -1;
  }
  return 0;
}

/* A worker is ready: join it to every other ready worker with a socketpair, one end each. Each pair
 * is made once, when the later of its two workers becomes ready. Draining workers are not joined. */
static void mesh_join(mworker_t *w) {
  for (mworker_t *o = M.workers; o; o = o->next) {
    if (o == w || o->state != W_READY || !o->running || o->ctl_open != 1) continue;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      mf_log("mesh: socketpair for workers %d and %d: %s", w->id, o->id, strerror(errno));
      continue;
    }
    send_peer(w, o, sv[0]);
    send_peer(o, w, sv[1]);
  }
}

/* ---- --reuseport (reuseport.c) ---------------------------------------------------------------- */

/* New connections go to the slots whose worker is ready; while none is, to every slot (they queue). */
static void steer_update(void) {
  if (!M.cfg->reuseport || M.shutting_down || M.nslots == 0) return;
  int *slots = malloc((size_t)M.nslots * sizeof *slots), n = 0;
  if (slots == NULL) return;
  for (int i = 0; i < M.nslots; i++)
    if (M.slots[i]->cur && M.slots[i]->cur->state == W_READY) slots[n++] = i;
  if (n == 0)
    for (int i = 0; i < M.nslots; i++) slots[n++] = i;
  mf_rp_steer(slots, n, M.nslots);
  free(slots);
}

typedef struct {
  uv_write_t req;
  uv_tcp_t handle;
} conn_send_t;

static void on_conn_handle_closed(uv_handle_t *h) { free(mf_container_of(h, conn_send_t, handle)); }

static void on_conn_sent(uv_write_t *req, int status) {
  conn_send_t *cs = mf_container_of(req, conn_send_t, req);
  (void)status; /* the worker is gone: the client sees the connection close */
  uv_close((uv_handle_t *)&cs->handle, on_conn_handle_closed);
}

/* A connection the master accepted from a parked socket goes to a ready worker ("conn" + the fd); the
 * workers take turns. */
static void rp_handoff(int fd) {
  static unsigned turn;
  int ready = 0;
  for (mworker_t *w = M.workers; w; w = w->next)
    if (w->state == W_READY && w->running && w->ctl_open == 1 && w->slot) ready++;
  mworker_t *pick = NULL;
  int k = ready ? (int)(turn++ % (unsigned)ready) : -1;
  for (mworker_t *w = M.workers; w && k >= 0; w = w->next)
    if (w->state == W_READY && w->running && w->ctl_open == 1 && w->slot && k-- == 0) pick = w;
  conn_send_t *cs = pick ? malloc(sizeof *cs) : NULL;
  if (cs == NULL) {
    mf_log("--reuseport: no worker can take a connection from a parked socket: closing it");
    close(fd);
    return;
  }
  uv_tcp_init(M.loop, &cs->handle);
  if (uv_tcp_open(&cs->handle, fd) != 0) {
    close(fd);
    uv_close((uv_handle_t *)&cs->handle, on_conn_handle_closed);
    return;
  }
  static char msg[] = "conn\n";
  uv_buf_t b = uv_buf_init(msg, sizeof msg - 1);
  if (uv_write2(&cs->req, (uv_stream_t *)&pick->ctl, &b, 1, (uv_stream_t *)&cs->handle, on_conn_sent) != 0)
    uv_close((uv_handle_t *)&cs->handle, on_conn_handle_closed);
}

typedef struct {
  uv_write_t req;
  char data[];
} queued_write_t;

static void on_queued_written(uv_write_t *req, int status) {
  (void)status;
  free(mf_container_of(req, queued_write_t, req));
}

static void ctl_send(mworker_t *w, const char *msg) {
  if (w->ctl_open != 1) return;
  uv_buf_t b = uv_buf_init((char *)msg, (unsigned)strlen(msg));
  int r = uv_try_write((uv_stream_t *)&w->ctl, &b, 1);
  if (r == (int)b.len) return;
  if (r < 0) r = 0;
  /* The control channel is nearly idle; a full one means a worker too stuck to listen. Queue the rest. */
  b.len -= (unsigned)r;
  queued_write_t *q = malloc(sizeof *q + b.len);
  if (q == NULL) return;
  memcpy(q->data, msg + r, b.len);
  b.base = q->data;
  if (uv_write(&q->req, (uv_stream_t *)&w->ctl, &b, 1, on_queued_written) != 0) free(q);
}

static void leader_tell(mworker_t *w) {
  char msg[96];
  if (M.leader == NULL) return;
  snprintf(msg, sizeof msg, "leader %d %ld %ld\n", M.leader->id, M.leader->serial, M.epoch);
  ctl_send(w, msg);
}

/* Names the oldest ready worker the leader when there is none (or `gone` was it). */
static void leader_elect(mworker_t *gone) {
  if (gone != NULL && gone != M.leader) return;
  if (gone == NULL && M.leader != NULL) return;
  mworker_t *best = NULL;
  for (mworker_t *w = M.workers; w; w = w->next)
    if (w != gone && w->running && w->state == W_READY && (!best || w->serial < best->serial)) best = w;
  M.leader = best;
  if (best == NULL) return;
  M.epoch++;
  mf_log("mesh leader: worker %d (pid %d), epoch %ld", best->id, best->pid, M.epoch);
  for (mworker_t *w = M.workers; w; w = w->next)
    if (w->running) leader_tell(w);
}

/* Takes w out of service: it stops accepting and drains (lazily: see worker.c). */
static void worker_retire(mworker_t *w, const char *why) {
  if (w->state == W_DRAINING) return;
  mf_log("retiring worker %d (pid %d): %s", w->id, w->pid, why);
  w->state = W_DRAINING;
  w->slot = NULL;
  ctl_send(w, "retire\n");
  leader_elect(w);
}

/* A replacement for slot s finished starting (ok) or failed. */
static void replacement_done(slot_t *s, int ok, const char *error) {
  if (M.reload.active && M.reload.index < M.nslots && M.slots[M.reload.index] == s) {
    if (ok) {
      M.reload.index++;
      reload_step();
    } else {
      reload_finish(0, error);
    }
  }
}

static void on_worker_ready(mworker_t *w) {
  w->state = W_READY;
  if (w->sb) w->sb->state = MF_SB_READY;
  mf_log("worker %d (pid %d) ready", w->id, w->pid);
  slot_t *s = w->slot;
  if (s && s->next == w) {
    mworker_t *old = s->cur;
    s->cur = w;
    s->next = NULL;
    mesh_join(w);
    leader_tell(w);
    if (old) worker_retire(old, M.reload.active ? "reload" : "replaced");
    replacement_done(s, 1, NULL);
  } else {
    mesh_join(w);
    leader_tell(w);
  }
  steer_update();
  maybe_announce();
  if (M.announced || uv_now(M.loop) - M.started_ms > 5000) leader_elect(NULL);
}

static void recycle(mworker_t *w, const char *why);

static void on_ctl_line(mworker_t *w, const char *line) {
  unsigned long long served;
  if (strcmp(line, "ready") == 0) {
    on_worker_ready(w);
  } else if (sscanf(line, "recycle %llu", &served) == 1) { /* it reached --max-requests (see worker.c) */
    snprintf(w->recycle_why, sizeof w->recycle_why, "served %llu requests (--max-requests)", served);
    if (w->state == W_READY) recycle(w, w->recycle_why); /* else (a reload, a replacement) on a tick */
  } else if (strncmp(line, "error ", 6) == 0) {
    snprintf(w->error, sizeof w->error, "%s", line + 6);
  } else {
    mf_log("worker %d (pid %d) sent an unknown control message '%s'", w->id, w->pid, line);
  }
}

static void on_ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char b[4096];
  (void)h, (void)suggested;
  *buf = uv_buf_init(b, sizeof b);
}

static void on_ctl_closed(uv_handle_t *h) {
  mworker_t *w = h->data;
  w->ctl_open = 0;
}

static void on_ctl_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  mworker_t *w = st->data;
  if (n < 0) {
    if (w->ctl_open == 1) {
      w->ctl_open = 2;
      uv_close((uv_handle_t *)st, on_ctl_closed);
    }
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    if (buf->base[i] == '\n') {
      w->line[w->line_len] = '\0';
      on_ctl_line(w, w->line);
      w->line_len = 0;
    } else if (w->line_len < sizeof w->line - 1) {
      w->line[w->line_len++] = buf->base[i];
    }
  }
}

static void worker_free_maybe(mworker_t *w) {
  if (w->proc_open || w->ctl_open || w->running) return;
  mworker_t **pp = &M.workers;
  while (*pp && *pp != w) pp = &(*pp)->next;
  if (*pp) *pp = w->next;
  mf_board_release(M.board, w->sb_index);
  free(w);
}

static void on_proc_closed(uv_handle_t *h) {
  mworker_t *w = h->data;
  w->proc_open = 0;
  worker_free_maybe(w);
}

static void on_ctl_closed_free(uv_handle_t *h) {
  on_ctl_closed(h);
  worker_free_maybe(h->data);
}

static void on_respawn(uv_timer_t *t) {
  slot_t *s = t->data;
  if (M.shutting_down || s->removed || s->cur) return;
  slot_spawn(s);
}

static void slot_schedule_respawn(slot_t *s, const char *what) {
  uint64_t up = uv_now(M.loop) - s->last_start_ms;
  if (s->backoff_ms == 0 || up >= STABLE_MS)
    s->backoff_ms = BACKOFF_MIN_MS;
  else
    s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
  mf_log("%s; respawning in %llu ms", what, (unsigned long long)s->backoff_ms);
  uv_timer_start(&s->respawn, on_respawn, s->backoff_ms, 0);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  mworker_t *w = p->data;
  char what[768];
  w->running = 0;
  w->state = W_DRAINING;
  uv_close((uv_handle_t *)p, on_proc_closed);
  if (!M.shutting_down) leader_elect(w);
  if (w->ctl_open == 1) {
    w->ctl_open = 2;
    uv_close((uv_handle_t *)&w->ctl, on_ctl_closed_free);
  }
  if (sig != 0) {
    const char *name = sigabbrev_np(sig);
    snprintf(what, sizeof what, "worker %d (pid %d) killed by signal %d (SIG%s)", w->id, w->pid, sig,
             name ? name : "?");
  } else {
    snprintf(what, sizeof what, "worker %d (pid %d) exited with status %d", w->id, w->pid, (int)status);
  }
  slot_t *s = w->slot;
  if (M.shutting_down) {
    mf_log("%s", what);
    if (live_workers() == 0) master_finish();
    return;
  }
  if (s && s->next == w) { /* a replacement that never became ready */
    s->next = NULL;
    mf_log("%s before it was ready", what);
    char why[1024];
    snprintf(why, sizeof why, "the new worker %d failed to start: %s", w->id,
             w->error[0] ? w->error : (sig ? "killed" : "exited"));
    replacement_done(s, 0, why);
    return;
  }
  if (s && s->cur == w) {
    s->cur = NULL;
    M.restarts++;
    steer_update(); /* its socket keeps what is queued there for the next worker */
    if (s->removed) {
      mf_log("%s", what);
      return;
    }
    slot_schedule_respawn(s, what);
    return;
  }
  mf_log("%s (retired)", what);
}

/* Starts a worker for slot s: its first, a respawn, or (when s->cur serves) its replacement. */
static void slot_spawn(slot_t *s) {
  int sv[2];
  char idarg[32], pidarg[32], serialarg[32], sbarg[32];
  char *argv[96];
  int n = 0;
  mworker_t *w = calloc(1, sizeof *w);
  if (w == NULL) return;
  w->id = s->id;
  w->slot = s;
  w->state = W_STARTING;
  w->serial = ++M.serial;
  w->started_ms = uv_now(M.loop);
  s->last_start_ms = w->started_ms;
  char rperr[256] = "";
  int listen_fd = M.cfg->reuseport ? mf_rp_fd(s->id - 1, rperr, sizeof rperr) : M.listen_fd;
  w->sb_index = listen_fd < 0 ? 0 : mf_board_take(M.board);
  w->sb = w->sb_index ? &M.board->e[w->sb_index] : NULL;
  if (w->sb == NULL || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    char what[384];
    snprintf(what, sizeof what, "cannot start worker %d: %s", s->id,
             listen_fd < 0 ? rperr : w->sb ? strerror(errno) : "no free scoreboard entry");
    mf_board_release(M.board, w->sb_index);
    free(w);
    if (!s->cur) slot_schedule_respawn(s, what);
    else replacement_done(s, 0, what);
    return;
  }
  snprintf(idarg, sizeof idarg, "--worker-id=%d", s->id);
  snprintf(pidarg, sizeof pidarg, "--master-pid=%d", (int)getpid());
  snprintf(serialarg, sizeof serialarg, "--serial=%ld", w->serial);
  argv[n++] = M.exe;
  argv[n++] = idarg;
  argv[n++] = pidarg;
  argv[n++] = serialarg;
  snprintf(sbarg, sizeof sbarg, "--sb-index=%d", w->sb_index);
  argv[n++] = sbarg;
  for (int i = 0; i < M.nargs; i++) argv[n++] = M.args[i];
  argv[n++] = "--";
  argv[n++] = (char *)M.cfg->script;
  argv[n] = NULL;

  uv_stdio_container_t stdio[6];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = listen_fd;
  stdio[4].flags = UV_INHERIT_FD;
  stdio[4].data.fd = sv[1];
  stdio[5].flags = UV_INHERIT_FD;
  stdio[5].data.fd = M.board_fd;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = on_exit_cb;
  o.file = M.exe;
  o.args = argv;
  o.stdio = stdio;
  o.stdio_count = 6;
  if (M.uid >= 0) {
    o.flags |= UV_PROCESS_SETUID;
    o.uid = (uv_uid_t)M.uid;
  }
  if (M.gid >= 0) {
    o.flags |= UV_PROCESS_SETGID;
    o.gid = (uv_gid_t)M.gid;
  }
  int r = uv_spawn(M.loop, &w->proc, &o);
  close(sv[1]);
  w->proc.data = w;
  w->proc_open = 1;
  w->next = M.workers;
  M.workers = w;
  if (r != 0) {
    char what[256];
    close(sv[0]);
    w->slot = NULL;
    uv_close((uv_handle_t *)&w->proc, on_proc_closed);
    snprintf(what, sizeof what, "cannot start worker %d: %s", s->id, uv_strerror(r));
    if (!s->cur) slot_schedule_respawn(s, what);
    else replacement_done(s, 0, what);
    return;
  }
  w->pid = w->proc.pid;
  w->running = 1;
  if (s->cur == NULL) s->cur = w;
  else s->next = w;
  uv_pipe_init(M.loop, &w->ctl, 1);
  w->ctl.data = w;
  if (uv_pipe_open(&w->ctl, sv[0]) == 0) {
    w->ctl_open = 1;
    uv_read_start((uv_stream_t *)&w->ctl, on_ctl_alloc, on_ctl_read);
  } else {
    close(sv[0]);
    w->ctl_open = 2;
    uv_close((uv_handle_t *)&w->ctl, on_ctl_closed_free);
  }
}

static void slot_free(uv_handle_t *h) { free(mf_container_of(h, slot_t, respawn)); }

static slot_t *slot_new(int id) {
  slot_t *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->id = id;
  uv_timer_init(M.loop, &s->respawn);
  s->respawn.data = s;
  uv_unref((uv_handle_t *)&s->respawn);
  return s;
}

/* ---- scaling --------------------------------------------------------------------------------- */

static int master_scale(int n, char *msg, size_t msglen) {
  if (n < 1 || n > 1024) {
    snprintf(msg, msglen, "the worker count must be from 1 to 1024");
    return -1;
  }
  if (M.reload.active) {
    snprintf(msg, msglen, "a reload is running; scale after it");
    return -1;
  }
  int old = M.nslots;
  if (n > M.nslots) {
    slot_t **ns = realloc(M.slots, (size_t)n * sizeof *ns);
    if (ns == NULL) {
      snprintf(msg, msglen, "out of memory");
      return -1;
    }
    M.slots = ns;
    for (int i = M.nslots; i < n; i++) {
      M.slots[i] = slot_new(i + 1);
      if (M.slots[i] == NULL) {
        snprintf(msg, msglen, "out of memory");
        return -1;
      }
      M.nslots = i + 1;
      slot_spawn(M.slots[i]);
    }
    steer_update();
  } else {
    int was = M.nslots;
    M.nslots = n;
    steer_update(); /* first: no new connection goes to a socket about to be parked */
    for (int i = n; i < was; i++) {
      slot_t *s = M.slots[i];
      s->removed = 1;
      uv_timer_stop(&s->respawn);
      uv_close((uv_handle_t *)&s->respawn, slot_free);
      if (s->cur) {
        s->cur->slot = NULL;
        worker_retire(s->cur, "scaled down");
      }
      if (s->next) {
        s->next->slot = NULL;
        uv_process_kill(&s->next->proc, SIGTERM);
      }
    }
  }
  M.cfg->workers = n;
  mf_log("scaled from %d to %d workers", old, n);
  snprintf(msg, msglen, "%d workers (was %d)", n, old);
  return 0;
}

/* ---- reload ---------------------------------------------------------------------------------- */

static void reload_reply_all(const char *json) {
  reply_t *r = M.reload.waiting;
  M.reload.waiting = NULL;
  while (r) {
    reply_t *next = r->next;
    control_reply(r->conn, json);
    free(r);
    r = next;
  }
}

static void json_escape(mf_buf_t *b, const char *s) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') mf_buf_appendf(b, "\\%c", ch);
    else if (ch < 0x20) mf_buf_appendf(b, "\\u%04x", ch);
    else mf_buf_append(b, s, 1);
  }
}

static void reload_finish(int ok, const char *error) {
  mf_buf_t b;
  mf_buf_init(&b);
  M.reload.active = 0;
  if (ok) {
    mf_log("reload done: %d workers replaced", M.nslots);
    mf_buf_appendf(&b, "{\"ok\":true,\"workers\":%d}", M.nslots);
  } else {
    mf_log("reload failed: %s", error);
    mf_buf_append(&b, "{\"ok\":false,\"error\":\"", 21);
    json_escape(&b, error);
    mf_buf_append(&b, "\"}", 3);
  }
  reload_reply_all(b.data);
  mf_buf_free(&b);
}

/* Replaces the next slot's worker, or ends the reload. */
static void reload_step(void) {
  while (M.reload.index < M.nslots && (M.slots[M.reload.index]->removed || !M.slots[M.reload.index]->cur))
    M.reload.index++; /* a slot waiting to respawn will start with the new code anyway */
  if (M.reload.index >= M.nslots) {
    reload_finish(1, NULL);
    return;
  }
  slot_t *s = M.slots[M.reload.index];
  if (s->next) return; /* already being replaced (recycling): its readiness moves us on */
  slot_spawn(s);
}

static void free_args(void) {
  for (int i = 0; i < M.nargs; i++) free(M.args[i]);
  M.nargs = 0;
}

/* Probes the script again, then replaces the workers one at a time. `conn` (may be NULL) gets the result. */
static void master_reload(const char *why, control_conn_t *conn) {
  if (conn) {
    reply_t *r = malloc(sizeof *r);
    if (r) {
      r->conn = conn;
      r->next = M.reload.waiting;
      M.reload.waiting = r;
    }
  }
  if (M.shutting_down) {
    reload_reply_all("{\"ok\":false,\"error\":\"the server is shutting down\"}");
    return;
  }
  if (M.reload.active) {
    mf_log("reload (%s): one is already running; it will answer too", why);
    return;
  }
  mf_log("reloading (%s)", why);
  mf_config_t *next = malloc(sizeof *next);
  char err[1024];
  if (next == NULL) {
    reload_finish(0, "out of memory");
    return;
  }
  *next = *M.cli;
  if (mf_script_probe(next, err, sizeof err) != 0) {
    free(next);
    reload_finish(0, err);
    return;
  }
  /* What a running server cannot change without a restart: keep the old values and say so. */
  if (next->port != M.cli->port && !(M.cli->from_cli & 2) && M.cli->port != 0 && next->port != M.cfg->port)
    mf_log("reload: the script asks for port %ld; changing the port needs a restart", next->port);
  next->port = M.cfg->port;
  snprintf(next->host, sizeof next->host, "%s", M.cfg->host);
  next->workers = M.cfg->workers; /* scale is its own command */
  if (next->reuseport != M.cfg->reuseport)
    mf_log("reload: switching --reuseport %s needs a restart", next->reuseport ? "on" : "off");
  next->reuseport = M.cfg->reuseport;
  M.cfg = next;
  free_args();
  M.nargs = mf_config_to_args(M.cfg, M.args, (int)MF_ARRAY_SIZE(M.args));
  M.reload.active = 1;
  M.reload.index = 0;
  M.reload.error[0] = '\0';
  reload_step();
}

/* ---- the watchdog and recycling (a tick every second) ---------------------------------------- */

static uint64_t rss_kb(int pid) {
  char path[64];
  unsigned long size = 0, resident = 0;
  snprintf(path, sizeof path, "/proc/%d/statm", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
  fclose(f);
  return (uint64_t)resident * (uint64_t)(sysconf(_SC_PAGESIZE) / 1024);
}

static void recycle(mworker_t *w, const char *why) {
  slot_t *s = w->slot;
  if (w->recycling || s == NULL || s->cur != w || s->next || M.reload.active || M.shutting_down) return;
  w->recycling = 1;
  mf_log("worker %d (pid %d) %s: starting its replacement", w->id, w->pid, why);
  slot_spawn(s);
}

static void on_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = mf_monotonic_ms();
  if (M.leader == NULL && !M.shutting_down && (M.announced || uv_now(M.loop) - M.started_ms > 5000))
    leader_elect(NULL);
  for (mworker_t *w = M.workers; w; w = w->next) {
    if (!w->running || w->sb == NULL) continue;
    if (w->state == W_STARTING && w->slot && w->slot->next == w &&
        uv_now(M.loop) - w->started_ms > START_TIMEOUT_MS) {
      mf_log("worker %d (pid %d) not ready after %d s: killing it", w->id, w->pid, START_TIMEOUT_MS / 1000);
      snprintf(w->error, sizeof w->error, "not ready after %d s", START_TIMEOUT_MS / 1000);
      uv_process_kill(&w->proc, SIGKILL);
      continue;
    }
    if (w->state == W_STARTING) continue;
    uint64_t beat = w->sb->beat_ms;
    if (M.cfg->watchdog_ms > 0 && beat > 0 && now > beat && now - beat > M.cfg->watchdog_ms) {
      char act[sizeof w->sb->activity];
      memcpy(act, w->sb->activity, sizeof act);
      act[sizeof act - 1] = '\0';
      mf_log("watchdog: worker %d (pid %d) has not turned its event loop for %.1f s (last running: %s): killing it",
             w->id, w->pid, (double)(now - beat) / 1000.0, act[0] ? act : "nothing");
      uv_process_kill(&w->proc, SIGKILL);
      continue;
    }
    if (w->state != W_READY) continue;
    char why[128];
    if (w->recycle_why[0]) {
      recycle(w, w->recycle_why);
    } else if (M.cfg->max_memory_mb > 0) {
      uint64_t kb = rss_kb(w->pid);
      if (kb > (uint64_t)M.cfg->max_memory_mb * 1024) {
        snprintf(why, sizeof why, "uses %llu MB (--max-memory)", (unsigned long long)(kb / 1024));
        recycle(w, why);
      }
    }
  }
}

/* ---- signals, shutdown, control -------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t) {
  (void)t;
  mf_log("workers still running after the grace period: killing them");
  for (mworker_t *w = M.workers; w; w = w->next)
    if (w->running) uv_process_kill(&w->proc, SIGKILL);
}

static void master_shutdown(const char *why) {
  if (M.shutting_down) {
    mf_log("second %s: killing workers now", why);
    M.killing = 1;
    for (mworker_t *w = M.workers; w; w = w->next)
      if (w->running) uv_process_kill(&w->proc, SIGKILL);
    if (live_workers() == 0) master_finish();
    return;
  }
  M.shutting_down = 1;
  mf_log("shutting down (%s): draining workers for up to %g s", why, (double)M.cfg->grace_ms / 1000.0);
  if (M.reload.active) reload_finish(0, "the server is shutting down");
  if (M.cfg->reuseport)
    mf_rp_close_all(); /* M.listen_fd is among them */
  else
    close(M.listen_fd); /* the workers keep their copies until they have drained */
  M.listen_fd = -1;
  watch_stop();
  for (int i = 0; i < M.nslots; i++) uv_timer_stop(&M.slots[i]->respawn);
  for (mworker_t *w = M.workers; w; w = w->next)
    if (w->running) uv_process_kill(&w->proc, SIGTERM);
  if (live_workers() == 0) master_finish();
  /* Workers enforce --grace themselves; this is the backstop if one cannot. */
  uv_timer_init(M.loop, &M.deadline);
  uv_timer_start(&M.deadline, on_deadline, M.cfg->grace_ms + 2000, 0);
}

/* Opens `path` for appending and, when workers run as another user, gives it to them. */
static int open_log(const char *path) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0 && (M.uid >= 0 || M.gid >= 0)) {
    if (fchown(fd, M.uid >= 0 ? (uid_t)M.uid : (uid_t)-1, M.gid >= 0 ? (gid_t)M.gid : (gid_t)-1) != 0)
      mf_log("cannot give %s to the workers' user: %s", path, strerror(errno));
  }
  return fd;
}

static void reopen_logs(void) {
  if (M.cli->error_log) {
    int fd = open_log(M.cli->error_log);
    if (fd >= 0) {
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
  }
  if (M.cli->access_log) {
    int fd = open_log(M.cli->access_log);
    if (fd >= 0) close(fd);
  }
  mf_log("log files reopened");
  for (mworker_t *w = M.workers; w; w = w->next)
    if (w->running) uv_process_kill(&w->proc, SIGUSR1);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  char msg[256];
  switch (signum) {
    case SIGTERM: master_shutdown("SIGTERM"); break;
    case SIGINT: master_shutdown("SIGINT"); break;
    case SIGHUP: master_reload("SIGHUP", NULL); break;
    case SIGTTIN: master_scale(M.nslots + 1, msg, sizeof msg); break;
    case SIGTTOU:
      if (M.nslots > 1) master_scale(M.nslots - 1, msg, sizeof msg);
      else mf_log("SIGTTOU: already at one worker");
      break;
    case SIGUSR1: reopen_logs(); break;
  }
}

static const char *state_name(const mworker_t *w) {
  return w->state == W_STARTING ? "starting" : w->state == W_READY ? "ready" : "draining";
}

static void status_json(mf_buf_t *b) {
  uint64_t now = uv_now(M.loop);
  mf_buf_appendf(b,
                 "{\"ok\":true,\"master\":{\"pid\":%d,\"uptime\":%.1f,\"url\":\"%s\",\"workers\":%d,"
                 "\"restarts\":%llu,\"reloading\":%s",
                 (int)getpid(), (double)(now - M.started_ms) / 1000.0, M.url, M.nslots,
                 (unsigned long long)M.restarts, M.reload.active ? "true" : "false");
  if (M.cfg->reuseport) {
    int sockets = 0;
    uint64_t handed = 0;
    mf_rp_stats(&sockets, &handed);
    mf_buf_appendf(b, ",\"reuseport\":{\"sockets\":%d,\"handed_off\":%llu}", sockets, (unsigned long long)handed);
  }
  mf_buf_append(b, "},\"workers\":[", 13);
  int first = 1;
  /* by id, then serial: the list is newest first */
  for (int id = 1; id <= 1024; id++) {
    int any = 0;
    for (mworker_t *w = M.workers; w; w = w->next) {
      if (w->id != id || !w->running) continue;
      any = 1;
      mf_buf_appendf(b,
                     "%s{\"id\":%d,\"pid\":%d,\"serial\":%ld,\"state\":\"%s\",\"uptime\":%.1f,"
                     "\"requests\":%llu,\"connections\":%llu,\"rss_kb\":%llu,\"yields\":%llu}",
                     first ? "" : ",", w->id, w->pid, w->serial, state_name(w),
                     (double)(now - w->started_ms) / 1000.0,
                     (unsigned long long)(w->sb ? w->sb->requests : 0),
                     (unsigned long long)(w->sb ? w->sb->connections : 0), (unsigned long long)rss_kb(w->pid),
                     (unsigned long long)(w->sb ? w->sb->yields : 0));
      first = 0;
    }
    if (!any && id > M.nslots) break;
  }
  mf_buf_append(b, "]}", 3);
}

static void on_control(control_conn_t *conn, const char *line) {
  mf_buf_t b;
  mf_buf_init(&b);
  char msg[256];
  int n;
  if (strcmp(line, "status") == 0) {
    status_json(&b);
    control_reply(conn, b.data);
  } else if (strcmp(line, "reload") == 0) {
    master_reload("control socket", conn);
  } else if (sscanf(line, "scale %d", &n) == 1) {
    int r = master_scale(n, msg, sizeof msg);
    mf_buf_appendf(&b, "{\"ok\":%s,\"%s\":\"", r == 0 ? "true" : "false", r == 0 ? "message" : "error");
    json_escape(&b, msg);
    mf_buf_append(&b, "\"}", 3);
    control_reply(conn, b.data);
  } else if (strcmp(line, "stop") == 0) {
    control_reply(conn, "{\"ok\":true,\"message\":\"stopping\"}");
    master_shutdown("stop command");
  } else {
    mf_buf_append(&b, "{\"ok\":false,\"error\":\"unknown command '", 38);
    json_escape(&b, line);
    mf_buf_append(&b, "' (status, reload, scale N, stop)\"}", 36);
    control_reply(conn, b.data);
  }
  mf_buf_free(&b);
}

static void on_watch(void) { master_reload("--watch: a .lua file changed", NULL); }

static int resolve_user(mf_config_t *cfg, char *err, size_t errlen) {
  M.uid = M.gid = -1;
  if (cfg->user) {
    struct passwd *pw = getpwnam(cfg->user);
    if (pw == NULL) {
      snprintf(err, errlen, "unknown user '%s'", cfg->user);
      return -1;
    }
    M.uid = (int)pw->pw_uid;
    if (!cfg->group) M.gid = (int)pw->pw_gid;
  }
  if (cfg->group) {
    struct group *gr = getgrnam(cfg->group);
    if (gr == NULL) {
      snprintf(err, errlen, "unknown group '%s'", cfg->group);
      return -1;
    }
    M.gid = (int)gr->gr_gid;
  }
  if ((M.uid >= 0 || M.gid >= 0) && geteuid() != 0) {
    snprintf(err, errlen, "--user and --group need the master to run as root");
    return -1;
  }
  return 0;
}

int master_run(mf_config_t *cfg) {
  char err[1024];
  mf_log_set_role(0);
  signal(SIGPIPE, SIG_IGN);
  M.cli = malloc(sizeof *M.cli);
  if (M.cli == NULL) return 1;
  *M.cli = *cfg;
  if (mf_script_probe(cfg, err, sizeof err) != 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 1;
  }
  if (resolve_user(cfg, err, sizeof err) != 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 2;
  }
  M.cfg = cfg;
  M.listen_fd = master_bind(cfg, err, sizeof err);
  if (M.listen_fd < 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 1;
  }
  M.cli->port = cfg->port; /* a reload keeps the port we have (0 became a real one) */
  size_t size = sizeof M.exe;
  if (uv_exepath(M.exe, &size) != 0) {
    fprintf(stderr, "moonfork: cannot find my own executable\n");
    return 1;
  }
  if (cfg->error_log) {
    int fd = open_log(cfg->error_log);
    if (fd < 0) {
      fprintf(stderr, "moonfork: cannot open --error-log %s: %s\n", cfg->error_log, strerror(errno));
      return 1;
    }
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  if (cfg->access_log) {
    int fd = open_log(cfg->access_log);
    if (fd < 0) {
      fprintf(stderr, "moonfork: cannot open --access-log %s: %s\n", cfg->access_log, strerror(errno));
      return 1;
    }
    close(fd);
  }
  if (cfg->pid_file) {
    FILE *f = fopen(cfg->pid_file, "w");
    if (f == NULL) {
      fprintf(stderr, "moonfork: cannot write --pid-file %s: %s\n", cfg->pid_file, strerror(errno));
      return 1;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
  }
  M.nargs = mf_config_to_args(cfg, M.args, (int)MF_ARRAY_SIZE(M.args));
  M.board_fd = mf_board_create(&M.board);
  if (M.board_fd < 0) {
    fprintf(stderr, "moonfork: cannot create the scoreboard: %s\n", strerror(errno));
    return 1;
  }
  M.loop = uv_default_loop();
  if (cfg->reuseport && mf_rp_init(M.loop, M.listen_fd, rp_handoff, err, sizeof err) != 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 1;
  }
  M.started_ms = uv_now(M.loop);
  mf_log("moonfork %s starting: %ld workers", MOONFORK_VERSION, cfg->workers);
  if (cfg->sched_slice_us > 0 && mf_cpu_slice_get() == 0)
    mf_log("note: no per-task CPU time slices here (they need Linux 6.12+ and a fair-share policy): "
           "workers keep --sched-slice only by yielding the CPU");
  if (geteuid() == 0 && M.uid < 0)
    mf_log("warning: running as root without --user: the workers (your Lua code) run as root too");

  mf_config_control_path(cfg, M.control_path, sizeof M.control_path);
  if (control_server_start(M.loop, M.control_path, on_control, err, sizeof err) != 0)
    mf_log("warning: no control socket: %s", err);
  else
    mf_log("control socket: %s", M.control_path);

  const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1};
  for (int i = 0; i < 6; i++) {
    uv_signal_init(M.loop, &M.sig[i]);
    uv_signal_start(&M.sig[i], on_signal, sigs[i]);
  }
  uv_timer_init(M.loop, &M.tick);
  uv_timer_start(&M.tick, on_tick, 1000, 1000);
  uv_unref((uv_handle_t *)&M.tick);
  if (cfg->watch && watch_start(M.loop, cfg->script, on_watch, err, sizeof err) != 0)
    mf_log("warning: --watch: %s", err);

  M.nslots = (int)cfg->workers;
  M.slots = calloc((size_t)M.nslots, sizeof *M.slots);
  if (M.slots == NULL) {
    fprintf(stderr, "moonfork: out of memory\n");
    return 1;
  }
  for (int i = 0; i < M.nslots; i++) {
    M.slots[i] = slot_new(i + 1);
    if (M.slots[i] == NULL) {
      fprintf(stderr, "moonfork: out of memory\n");
      return 1;
    }
  }
  for (int i = 0; i < M.nslots; i++) slot_spawn(M.slots[i]);
  uv_run(M.loop, UV_RUN_DEFAULT);
  return 0;
}
