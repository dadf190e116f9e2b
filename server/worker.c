/* worker.c -- a worker process: its event loop, the Lua state running the script, the master link.
 *
 * A worker inherits the listening socket (fd 3) and one end of a socketpair to the master (fd 4, the
 * control channel). It runs the whole script, and only once moonfork.listen() was reached and the
 * script returned does it start accepting and tell the master "ready". It stops on "stop" from the
 * master, on SIGTERM, or when the control channel closes (the master died; PR_SET_PDEATHSIG is the
 * backstop): it stops accepting, lets in-flight requests finish for up to --grace, and exits. Timers
 * and other Lua handles never keep a draining worker alive: it exits when its connections are gone.
 *
 * The master also sends "peer ID SERIAL" lines, each with one end of a socketpair attached: the
 * worker's stream to that peer in the mesh (mesh.c); and, with --reuseport, "conn" lines with a client
 * connection attached that it accepted from a parked socket (reuseport.c). With --reuseport, fd 3 is
 * the worker's slot's own socket.
 *
 * "retire" (a reload or recycling) drains more gently than "stop": idle keep-alive connections stay
 * open until their next request (answered with "Connection: close") or their keep-alive timeout, so
 * a client that sends just as the drain begins is not cut off. Scripts hear moonfork.on("drain") when
 * a drain begins (to end long polls and streams) and moonfork.on("exit") just before the exit.
 *
 * A timer writes a heartbeat and the counters to this worker's scoreboard entry (fd 5) ten times a
 * second; the master's watchdog reads it, and a loop stuck in a handler stops it. */
#include "worker.h"

#include <lauxlib.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include "cpuslice.h"
#include "http.h"
#include "log.h"
#include "lua_core.h"
#include "lua_env.h"
#include "lua_http.h"
#include "lua_mesh.h"
#include "mesh.h"
#include "scoreboard.h"
#include <fcntl.h>
#include <errno.h>
#include "script.h"

typedef struct {
  uv_loop_t *loop;
  mf_config_t *cfg;
  lua_State *L;
  http_server_t *srv;
  uv_pipe_t control;
  uv_signal_t sigterm;
  uv_timer_t grace;
  uv_timer_t beat;
  uv_signal_t sigusr1;
  mf_board_t *board;
  mf_scoreboard_t *sb;
  int access_fd;
  int draining;
  int idle_closed;
  char ctl_line[256];
  size_t ctl_len;
} worker_t;

static worker_t W;

static void worker_exit(int status) {
  if (W.L && lua_http_serving()) lua_core_emit(W.L, "exit");
  if (W.srv && W.access_fd >= 0) http_server_set_access_log(W.srv, -1);
  fflush(NULL);
  exit(status);
}

static void on_drained(void *data) {
  (void)data;
  mf_log("drained; exiting");
  worker_exit(0);
}

static void on_grace(uv_timer_t *t) {
  (void)t;
  mf_log("grace period over: closing %zu connection(s) and exiting", http_server_conn_count(W.srv));
  worker_exit(0);
}

/* close_idle: a stop closes idle keep-alive connections at once; a retire lets them finish (see top). */
static void worker_drain(const char *why, int close_idle) {
  if (W.draining) {
    if (close_idle && !W.idle_closed && W.srv) {
      W.idle_closed = 1;
      http_server_drain(W.srv, 1);
    }
    return;
  }
  W.draining = 1;
  W.idle_closed = close_idle;
  mf_log("%s (%s): %zu connection(s) open", close_idle ? "stopping" : "retiring", why,
         W.srv ? http_server_conn_count(W.srv) : (size_t)0);
  if (W.sb) W.sb->state = MF_SB_DRAINING;
  uv_timer_init(W.loop, &W.grace);
  uv_timer_start(&W.grace, on_grace, W.cfg->grace_ms, 0);
  uv_unref((uv_handle_t *)&W.grace);
  /* Draining first, so what the drain hook answers (long polls, streams) says "Connection: close"
   * and its clients come back to another worker; then the hook; then the wait for connections. */
  if (W.srv) http_server_set_draining(W.srv);
  if (W.L && lua_http_serving()) lua_core_emit(W.L, "drain");
  if (W.srv) http_server_drain(W.srv, close_idle);
}

/* "peer ID SERIAL": the socket that came with the line is our stream to worker ID. */
static void on_peer_line(const char *line) {
  int id;
  long serial;
  if (sscanf(line, "peer %d %ld", &id, &serial) != 2 || uv_pipe_pending_count(&W.control) < 1) {
    mf_log("bad control message '%s' ignored", line);
    return;
  }
  uv_pipe_t *p = malloc(sizeof *p);
  if (p == NULL) return;
  uv_pipe_init(W.loop, p, 0);
  if (uv_accept((uv_stream_t *)&W.control, (uv_stream_t *)p) != 0) {
    mf_log("cannot take the mesh socket for worker %d", id);
    uv_close((uv_handle_t *)p, (uv_close_cb)free);
    return;
  }
  mesh_add_peer(p, id, serial);
}

/* "conn": the master hands us a client connection that reached a parked --reuseport socket. */
static void on_conn_line(void) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (t == NULL) return;
  uv_tcp_init(W.loop, t);
  uv_os_fd_t fd;
  int taken = uv_pipe_pending_count(&W.control) > 0 && uv_accept((uv_stream_t *)&W.control, (uv_stream_t *)t) == 0;
  if (taken && W.srv && uv_fileno((uv_handle_t *)t, &fd) == 0) {
    int own = dup(fd); /* the handle goes; http.c opens its own on the descriptor */
    if (own >= 0) http_server_adopt(W.srv, own);
  } else if (!taken) {
    mf_log("bad control message 'conn' (no connection attached) ignored");
  }
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

/* "leader ID SERIAL EPOCH": the master named the mesh's leader. */
static void on_leader_line(const char *line) {
  int id;
  long serial, epoch;
  if (sscanf(line, "leader %d %ld %ld", &id, &serial, &epoch) != 3) {
    mf_log("bad control message '%s' ignored", line);
    return;
  }
  lua_mesh_leader(W.L, id, serial, epoch);
}

static void on_control_line(const char *line) {
  if (strcmp(line, "stop") == 0)
    worker_drain("asked by the master", 1);
  else if (strcmp(line, "retire") == 0)
    worker_drain("replaced by a new worker", 0);
  else if (strncmp(line, "peer ", 5) == 0)
    on_peer_line(line);
  else if (strncmp(line, "leader ", 7) == 0)
    on_leader_line(line);
  else if (strcmp(line, "conn") == 0)
    on_conn_line();
  else
    mf_log("unknown control message '%s' ignored", line);
}

static void on_ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char b[1024];
  (void)h, (void)suggested;
  *buf = uv_buf_init(b, sizeof b);
}

static void on_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n < 0) {
    uv_close((uv_handle_t *)s, NULL);
    worker_drain("the master is gone", 1);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    char ch = buf->base[i];
    if (ch == '\n') {
      W.ctl_line[W.ctl_len] = '\0';
      on_control_line(W.ctl_line);
      W.ctl_len = 0;
    } else if (W.ctl_len < sizeof W.ctl_line - 1) {
      W.ctl_line[W.ctl_len++] = ch;
    }
  }
}

static void on_sigterm(uv_signal_t *s, int signum) {
  (void)s, (void)signum;
  worker_drain("SIGTERM", 1);
}

static int open_append(const char *path) {
  return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

/* SIGUSR1 (the master forwards it): reopen the log files, after logrotate moved them. */
static void on_sigusr1(uv_signal_t *s, int signum) {
  (void)s, (void)signum;
  if (W.cfg->error_log) {
    int fd = open_append(W.cfg->error_log);
    if (fd >= 0) {
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
  }
  if (W.cfg->access_log && W.access_fd >= 0) {
    int fd = open_append(W.cfg->access_log);
    if (fd >= 0) {
      dup2(fd, W.access_fd); /* same descriptor number: the server keeps using it */
      close(fd);
    } else {
      mf_log("cannot reopen --access-log %s: %s", W.cfg->access_log, strerror(errno));
    }
  }
}

/* After a crowd of connections has gone, glibc keeps the memory they used (and LuaJIT the garbage
 * their requests left): give it back once the count has fallen to a quarter of the crowd (crowds of
 * 1,000 or more). The crowd is the server's own high-water mark, not a sample of the count, so a crowd
 * that comes and goes between two heartbeats is seen too. */
static void trim_after_crowd(size_t conns) {
  static size_t crowd;
  size_t peak = http_server_take_conn_peak(W.srv);
  if (peak > crowd) crowd = peak;
  if (crowd < 1000 || conns > crowd / 4) return;
  lua_gc(W.L, LUA_GCCOLLECT, 0);
  malloc_trim(0);
  crowd = conns;
}

static void on_beat(uv_timer_t *t) {
  (void)t;
  size_t conns = http_server_conn_count(W.srv);
  W.sb->beat_ms = mf_monotonic_ms();
  W.sb->requests = http_server_requests(W.srv);
  W.sb->connections = conns;
  W.sb->yields = mf_cpu_slice_yields();
  trim_after_crowd(conns);
}

static void control_send(const char *msg) {
  uv_buf_t b = uv_buf_init((char *)msg, (unsigned)strlen(msg));
  if (uv_try_write((uv_stream_t *)&W.control, &b, 1) != (int)b.len) mf_log("cannot tell the master '%s'", msg);
}

/* --max-requests, counted here on every response (as gunicorn and Unicorn do): at the limit the worker
 * asks the master for its replacement, and serves on until the replacement is ready and retires it. */
static void on_request_limit(void *data, uint64_t requests) {
  char msg[64];
  (void)data;
  snprintf(msg, sizeof msg, "recycle %llu\n", (unsigned long long)requests);
  control_send(msg);
}

/* The limit with jitter (up to a tenth more), so that workers started together do not recycle together. */
static uint64_t request_limit(const mf_config_t *cfg) {
  if (cfg->max_requests <= 0) return 0;
  unsigned seed = (unsigned)getpid() ^ (unsigned)cfg->serial;
  return (uint64_t)cfg->max_requests + (uint64_t)(rand_r(&seed) % (unsigned)(cfg->max_requests / 10 + 1));
}

/* Tells the master why this worker will not start (the first line of err), for `moonfork reload`. */
static void report_error(const char *err) {
  char line[600];
  size_t n = 0;
  n += (size_t)snprintf(line, sizeof line, "error ");
  for (const char *p = err; *p && *p != '\n' && n < sizeof line - 2; p++) line[n++] = *p;
  line[n++] = '\n';
  line[n] = '\0';
  control_send(line);
}

int worker_run(mf_config_t *cfg) {
  char err[2048];
  mf_log_set_role((int)cfg->worker_id);
  /* Die with the master: the control channel closing is the main signal, this is the backstop. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (cfg->master_pid > 0 && getppid() != (pid_t)cfg->master_pid) return 1;
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN); /* Ctrl-C reaches the whole process group: the master decides what happens */
  signal(SIGHUP, SIG_IGN);
  if (cfg->sched_slice_us > 0) { /* short slices: see cpuslice.c */
    int r = mf_cpu_slice_set(cfg->sched_slice_us);
    if (r < 0) mf_log("--sched-slice: cannot set the CPU time slice: %s", strerror(-r));
  }

  W.cfg = cfg;
  W.loop = uv_default_loop();
  uv_pipe_init(W.loop, &W.control, 1);
  if (uv_pipe_open(&W.control, MF_FD_CONTROL) != 0) {
    mf_log("no control channel on fd %d: a worker is started by the master, not by hand", MF_FD_CONTROL);
    return 1;
  }
  uv_read_start((uv_stream_t *)&W.control, on_ctl_alloc, on_ctl_read);
  if (cfg->sched_slice_us > 0) { /* and keeps it: see cpuslice.c */
    int r = mf_cpu_slice_keep(W.loop, cfg->sched_slice_us);
    if (r != 0) mf_log("--sched-slice: cannot keep the slice: %s", uv_strerror(r));
  }
  uv_signal_init(W.loop, &W.sigterm);
  uv_signal_start(&W.sigterm, on_sigterm, SIGTERM);
  uv_signal_init(W.loop, &W.sigusr1);
  uv_signal_start(&W.sigusr1, on_sigusr1, SIGUSR1);
  uv_unref((uv_handle_t *)&W.sigusr1);
  W.board = mf_board_attach();
  if (W.board && cfg->sb_index > 0) W.sb = &W.board->e[cfg->sb_index];
  W.access_fd = -1;

  http_callbacks_t cb = {lua_http_on_request, lua_http_on_conn_closed, lua_http_on_drain, on_drained,
                         on_request_limit};
  W.L = mf_lua_new(cfg->script, "worker");
  if (W.L == NULL) {
    mf_log("out of memory");
    return 1;
  }
  W.srv = http_server_new(W.loop, cfg, MF_FD_LISTEN, &cb, W.L, err, sizeof err);
  if (W.srv == NULL) {
    mf_log("%s", err);
    return 1;
  }
  lua_core_open(W.L, W.loop, cfg);
  lua_http_open(W.L);
  lua_mesh_open(W.L);
  mesh_init(W.loop, &lua_mesh_callbacks, W.L);
  lua_pop(W.L, 1);
  if (mf_lua_require(W.L, "moonfork.sched") != 0) return 1; /* before the script: see sched.lua */
  if (W.sb) http_server_set_scoreboard(W.srv, W.board, (int)cfg->sb_index);
  http_server_set_request_limit(W.srv, request_limit(cfg));
  if (cfg->access_log) {
    W.access_fd = open_append(cfg->access_log);
    if (W.access_fd < 0) mf_log("cannot open --access-log %s: %s", cfg->access_log, strerror(errno));
    else http_server_set_access_log(W.srv, W.access_fd);
  }
  if (mf_script_run(W.L, cfg->script, err, sizeof err) != 0) {
    mf_log_block(err);
    report_error(err);
    return 1;
  }
  if (!lua_http_serving()) {
    snprintf(err, sizeof err, "%s never called moonfork.listen(): nothing to serve", cfg->script);
    mf_log("%s", err);
    report_error(err);
    return 1;
  }
  if (W.draining) { /* told to stop while the script was loading */
    worker_exit(0);
  }
  int r = http_server_start(W.srv);
  if (r != 0) {
    mf_log("cannot accept on the listening socket: %s", uv_strerror(r));
    return 1;
  }
  if (W.sb) {
    W.sb->state = MF_SB_READY;
    uv_timer_init(W.loop, &W.beat);
    on_beat(&W.beat);
    uv_timer_start(&W.beat, on_beat, 100, 100);
    uv_unref((uv_handle_t *)&W.beat);
  }
  control_send("ready\n");
  uv_run(W.loop, UV_RUN_DEFAULT);
  return 0;
}
