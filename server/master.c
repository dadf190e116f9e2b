/* master.c -- the master process: binds the socket, starts and supervises workers, handles signals.
 *
 * The master never runs request code: it learns listen()'s options from a probe of the script
 * (script.c), binds, then fork+execs the same binary once per worker slot with the listening socket as
 * fd 3 and its end of a socketpair as fd 4 (the control channel: the worker says "ready" there, the
 * master can say "stop"). libuv's process handles reap every child, so there are no zombies. A worker
 * that dies is respawned after a backoff: 100 ms, doubling on each death that comes quickly, up to
 * 30 s, and back to 100 ms once a worker has stayed up for 60 s. */
#define _GNU_SOURCE
#include "master.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "script.h"
#include "util.h"
#include "worker.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000

typedef struct {
  int id;
  uv_process_t proc;
  uv_pipe_t ctl;
  uv_timer_t respawn;
  int running, proc_open, ctl_open, ready;
  long serial;
  uint64_t started_ms, backoff_ms;
  int pid;
  char line[128];
  size_t line_len;
} slot_t;

static struct {
  uv_loop_t *loop;
  mf_config_t *cfg;
  int listen_fd;
  char url[300];
  char exe[4096];
  char *args[64];
  int nargs;
  slot_t **slots;
  int nslots;
  int announced, shutting_down, killing;
  long serial; /* spawns so far */
  uv_signal_t sigterm, sigint;
  uv_timer_t deadline;
} M;

static void slot_spawn(slot_t *s);

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
  for (int i = 0; i < M.nslots; i++) n += M.slots[i]->running;
  return n;
}

static void master_finish(void) {
  mf_log("all workers exited; bye");
  exit(M.killing ? 1 : 0);
}

static void maybe_announce(void) {
  if (M.announced || M.shutting_down) return;
  for (int i = 0; i < M.nslots; i++)
    if (!M.slots[i]->ready) return;
  char pids[1024];
  size_t n = 0;
  pids[0] = '\0';
  for (int i = 0; i < M.nslots && n < sizeof pids - 16; i++)
    n += (size_t)snprintf(pids + n, sizeof pids - n, "%s%d", i ? ", " : "", M.slots[i]->pid);
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

/* Sends "peer ID SERIAL" with `fd` attached to slot s; the fd is ours to close either way. */
static int send_peer(slot_t *s, const slot_t *peer, int fd) {
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
  if (uv_write2(&ps->req, (uv_stream_t *)&s->ctl, &b, 1, (uv_stream_t *)&ps->handle, on_peer_sent) != 0) {
    uv_close((uv_handle_t *)&ps->handle, on_peer_handle_closed);
    return -1;
  }
  return 0;
}

/* A worker is ready: join it to every other ready worker with a socketpair, one end each. Each pair
 * is made once, when the later of its two workers becomes ready. */
static void mesh_join(slot_t *s) {
  for (int i = 0; i < M.nslots; i++) {
    slot_t *o = M.slots[i];
    if (o == s || !o->ready || !o->running || o->ctl_open != 1) continue;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      mf_log("mesh: socketpair for workers %d and %d: %s", s->id, o->id, strerror(errno));
      continue;
    }
    send_peer(s, o, sv[0]);
    send_peer(o, s, sv[1]);
  }
}

static void on_ctl_line(slot_t *s, const char *line) {
  if (strcmp(line, "ready") == 0) {
    s->ready = 1;
    mf_log("worker %d (pid %d) ready", s->id, s->pid);
    mesh_join(s);
    maybe_announce();
  } else {
    mf_log("worker %d (pid %d) sent an unknown control message '%s'", s->id, s->pid, line);
  }
}

static void on_ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char b[1024];
  (void)h, (void)suggested;
  *buf = uv_buf_init(b, sizeof b);
}

static void on_ctl_closed(uv_handle_t *h) {
  slot_t *s = h->data;
  s->ctl_open = 0;
}

static void on_ctl_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  slot_t *s = st->data;
  if (n < 0) {
    if (s->ctl_open == 1) {
      s->ctl_open = 2; /* closing */
      uv_close((uv_handle_t *)st, on_ctl_closed);
    }
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    if (buf->base[i] == '\n') {
      s->line[s->line_len] = '\0';
      on_ctl_line(s, s->line);
      s->line_len = 0;
    } else if (s->line_len < sizeof s->line - 1) {
      s->line[s->line_len++] = buf->base[i];
    }
  }
}

static void on_proc_closed(uv_handle_t *h) {
  slot_t *s = h->data;
  s->proc_open = 0;
}

static void on_respawn(uv_timer_t *t) {
  slot_t *s = t->data;
  if (M.shutting_down) return;
  if (s->proc_open || s->ctl_open) { /* the old handles are still closing */
    uv_timer_start(&s->respawn, on_respawn, 10, 0);
    return;
  }
  slot_spawn(s);
}

static void slot_schedule_respawn(slot_t *s, const char *what) {
  uint64_t up = uv_now(M.loop) - s->started_ms;
  if (s->backoff_ms == 0 || up >= STABLE_MS)
    s->backoff_ms = BACKOFF_MIN_MS;
  else
    s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
  mf_log("%s; respawning in %llu ms", what, (unsigned long long)s->backoff_ms);
  uv_timer_start(&s->respawn, on_respawn, s->backoff_ms, 0);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  slot_t *s = p->data;
  char what[256];
  s->running = 0;
  s->ready = 0;
  uv_close((uv_handle_t *)p, on_proc_closed);
  if (s->ctl_open == 1) {
    s->ctl_open = 2;
    uv_close((uv_handle_t *)&s->ctl, on_ctl_closed);
  }
  if (sig != 0) {
    const char *name = sigabbrev_np(sig);
    snprintf(what, sizeof what, "worker %d (pid %d) killed by signal %d (SIG%s)", s->id, s->pid, sig,
             name ? name : "?");
  } else {
    snprintf(what, sizeof what, "worker %d (pid %d) exited with status %d", s->id, s->pid, (int)status);
  }
  if (M.shutting_down) {
    mf_log("%s", what);
    if (live_workers() == 0) master_finish();
    return;
  }
  slot_schedule_respawn(s, what);
}

static void slot_spawn(slot_t *s) {
  int sv[2];
  char idarg[32], pidarg[32], serialarg[32];
  char *argv[80];
  int n = 0;
  s->started_ms = uv_now(M.loop);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    char what[128];
    snprintf(what, sizeof what, "cannot start worker %d: socketpair: %s", s->id, strerror(errno));
    slot_schedule_respawn(s, what);
    return;
  }
  snprintf(idarg, sizeof idarg, "--worker-id=%d", s->id);
  snprintf(pidarg, sizeof pidarg, "--master-pid=%d", (int)getpid());
  argv[n++] = M.exe;
  argv[n++] = idarg;
  argv[n++] = pidarg;
  s->serial = ++M.serial;
  snprintf(serialarg, sizeof serialarg, "--serial=%ld", s->serial);
  argv[n++] = serialarg;
  for (int i = 0; i < M.nargs; i++) argv[n++] = M.args[i];
  argv[n++] = "--";
  argv[n++] = (char *)M.cfg->script;
  argv[n] = NULL;

  uv_stdio_container_t stdio[5];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = M.listen_fd;
  stdio[4].flags = UV_INHERIT_FD;
  stdio[4].data.fd = sv[1];
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.exit_cb = on_exit_cb;
  o.file = M.exe;
  o.args = argv;
  o.stdio = stdio;
  o.stdio_count = 5;
  int r = uv_spawn(M.loop, &s->proc, &o);
  close(sv[1]);
  s->proc.data = s;
  s->proc_open = 1;
  if (r != 0) {
    char what[256];
    close(sv[0]);
    uv_close((uv_handle_t *)&s->proc, on_proc_closed);
    snprintf(what, sizeof what, "cannot start worker %d: %s", s->id, uv_strerror(r));
    slot_schedule_respawn(s, what);
    return;
  }
  s->pid = s->proc.pid;
  s->running = 1;
  uv_pipe_init(M.loop, &s->ctl, 1);
  s->ctl.data = s;
  s->line_len = 0;
  if (uv_pipe_open(&s->ctl, sv[0]) == 0) {
    s->ctl_open = 1;
    uv_read_start((uv_stream_t *)&s->ctl, on_ctl_alloc, on_ctl_read);
  } else {
    close(sv[0]);
    s->ctl_open = 2;
    uv_close((uv_handle_t *)&s->ctl, on_ctl_closed);
  }
}

static slot_t *slot_new(int id) {
  slot_t *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->id = id;
  uv_timer_init(M.loop, &s->respawn);
  s->respawn.data = s;
  uv_unref((uv_handle_t *)&s->respawn);
  return s;
}

/* ---- signals and shutdown -------------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t) {
  (void)t;
  mf_log("workers still running after the grace period: killing them");
  for (int i = 0; i < M.nslots; i++)
    if (M.slots[i]->running) uv_process_kill(&M.slots[i]->proc, SIGKILL);
}

static void master_shutdown(int signum) {
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (M.shutting_down) {
    mf_log("second %s: killing workers now", name);
    M.killing = 1;
    for (int i = 0; i < M.nslots; i++)
      if (M.slots[i]->running) uv_process_kill(&M.slots[i]->proc, SIGKILL);
    if (live_workers() == 0) master_finish();
    return;
  }
  M.shutting_down = 1;
  mf_log("shutting down (%s): draining workers for up to %g s", name, (double)M.cfg->grace_ms / 1000.0);
  close(M.listen_fd); /* the workers keep their copies until they have drained */
  M.listen_fd = -1;
  for (int i = 0; i < M.nslots; i++) {
    uv_timer_stop(&M.slots[i]->respawn);
    if (M.slots[i]->running) uv_process_kill(&M.slots[i]->proc, SIGTERM);
  }
  if (live_workers() == 0) master_finish();
  /* Workers enforce --grace themselves; this is the backstop if one cannot. */
  uv_timer_init(M.loop, &M.deadline);
  uv_timer_start(&M.deadline, on_deadline, M.cfg->grace_ms + 2000, 0);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  master_shutdown(signum);
}

int master_run(mf_config_t *cfg) {
  char err[1024];
  mf_log_set_role(0);
  signal(SIGPIPE, SIG_IGN);
  if (mf_script_probe(cfg, err, sizeof err) != 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 1;
  }
  M.cfg = cfg;
  M.listen_fd = master_bind(cfg, err, sizeof err);
  if (M.listen_fd < 0) {
    fprintf(stderr, "moonfork: %s\n", err);
    return 1;
  }
  size_t size = sizeof M.exe;
  if (uv_exepath(M.exe, &size) != 0) {
    fprintf(stderr, "moonfork: cannot find my own executable\n");
    return 1;
  }
  M.nargs = mf_config_to_args(cfg, M.args, (int)MF_ARRAY_SIZE(M.args));
  M.loop = uv_default_loop();
  mf_log("moonfork %s starting: %ld workers", MOONFORK_VERSION, cfg->workers);
  uv_signal_init(M.loop, &M.sigterm);
  uv_signal_start(&M.sigterm, on_signal, SIGTERM);
  uv_signal_init(M.loop, &M.sigint);
  uv_signal_start(&M.sigint, on_signal, SIGINT);
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
