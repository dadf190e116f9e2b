/* worker.c -- a worker process: its event loop, the Lua state running the script, the master link.
 *
 * A worker inherits the listening socket (MF_FD_LISTEN) and one end of a socketpair to the master
 * (MF_FD_CONTROL, the channel of chan.c; fds.h names them all). It runs the whole script, and only once
 * moonfork.listen() was reached and the script returned does it start accepting and tell the master
 * "ready" (or, when it cannot start, "error" and why). It stops on "stop" from the master, on SIGTERM,
 * or when the channel closes (the master died; PR_SET_PDEATHSIG is the backstop): it stops accepting,
 * lets in-flight requests finish for up to --grace, and exits. Timers and other Lua handles never keep
 * a draining worker alive: it exits when its connections are gone.
 *
 * The master also sends "peer ID SERIAL" lines, each with one end of a socketpair attached: the
 * worker's stream to that peer in the mesh (mesh.c); and, with --reuseport, "conn" lines with a client
 * connection attached that it accepted from a parked socket (reuseport.c). With --reuseport,
 * MF_FD_LISTEN is the worker's slot's own socket. At --max-requests the worker asks for its own
 * replacement with "recycle N".
 *
 * "retire" (a reload or recycling) drains more gently than "stop": idle keep-alive connections stay
 * open until their next request (answered with "Connection: close") or their keep-alive timeout, so
 * a client that sends just as the drain begins is not cut off. Scripts hear moonfork.on("drain") when
 * a drain begins (to end long polls and streams) and moonfork.on("exit") just before the exit.
 *
 * A timer writes a heartbeat and the counters to this worker's scoreboard entry (MF_FD_SCOREBOARD) ten
 * times a second; the master's watchdog reads it, and a loop stuck in a handler stops it. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

#include "chan.h"
#include "cpuslice.h"
#include "fds.h"
#include "http.h"
#include "log.h"
#include "bind_core.h"
#include "luastate.h"
#include "bind_http.h"
#include "bind_mesh.h"
#include "bind_httpc.h"
#include "bind_pass.h"
#include "bind_redis.h"
#include "bind_tcp.h"
#include "bind_pg.h"
#include "bind_ws.h"
#include "ws_conn.h"
#include "mesh.h"
#include "scoreboard.h"
#include "shdict_region.h"
#include "script.h"

typedef struct {
  uv_loop_t *loop;
  mf_config_t *cfg;
  lua_State *L;
  http_server_t *srv;
  chan_t chan;              /* to the master (MF_FD_CONTROL) */
  uv_signal_t sigterm;
  uv_timer_t grace;
  uv_timer_t beat;
  uv_signal_t sigusr1;
  scoreboard_board_t *board;
  scoreboard_entry_t *sb;
  int access_fd;
  int draining;
  int idle_closed;
  int http_drained; /* on_drained came: the HTTP side is done draining */
  int exiting;     /* worker_exit was called: the loop stops after this turn */
  int exit_status;
} worker_t;

static worker_t worker;

/* Runs moonfork.on("exit") and stops the loop; worker_run then closes the Lua state and returns
 * `status`. The exit is not taken here, inside a callback that Lua may be under: closing the state
 * runs every finaliser (lua-cjson's buffer is freed there, so a sanitized build finds no leak). */
static void worker_exit(int status) {
  if (worker.exiting) return;
  worker.exiting = 1;
  worker.exit_status = status;
  if (worker.L && bind_http_serving()) bind_core_emit(worker.L, "exit");
  if (worker.L) bind_tcp_emit(worker.L, "exit"); /* the socket pools */
  if (worker.L) bind_redis_emit(worker.L, "exit");
  if (worker.srv && worker.access_fd >= 0) http_server_set_access_log(worker.srv, -1);
  uv_stop(worker.loop);
}

/* After the loop: the Lua state goes (its finalisers run), the logs are flushed. */
static int worker_finish(void) {
  if (worker.L) lua_close(worker.L);
  worker.L = NULL;
  fflush(NULL);
  return worker.exit_status;
}

/* Draining ends when both the HTTP connections (on_drained) and the WebSockets (on_ws_gone) are gone. */
static void on_drained(void *data) {
  (void)data;
  worker.http_drained = 1;
  if (ws_conn_count() > 0) return; /* on_ws_gone exits */
  mf_log("drained; exiting");
  worker_exit(0);
}

static void on_ws_gone(void) {
  if (!worker.http_drained) return;
  mf_log("drained (the last WebSocket closed); exiting");
  worker_exit(0);
}

static void on_grace(uv_timer_t *t) {
  (void)t;
  mf_log("grace period over: closing %zu connection(s) and exiting", http_server_conn_count(worker.srv));
  worker_exit(0);
}

/* close_idle: a stop closes idle keep-alive connections at once; a retire lets them finish (see top). */
static void worker_drain(const char *why, int close_idle) {
  if (worker.draining) {
    if (close_idle && !worker.idle_closed && worker.srv) {
      worker.idle_closed = 1;
      http_server_drain(worker.srv, 1);
    }
    return;
  }
  worker.draining = 1;
  worker.idle_closed = close_idle;
  mf_log("%s (%s): %zu connection(s) open", close_idle ? "stopping" : "retiring", why,
         worker.srv ? http_server_conn_count(worker.srv) : (size_t)0);
  if (worker.sb) worker.sb->state = MF_SB_DRAINING;
  uv_timer_init(worker.loop, &worker.grace);
  uv_timer_start(&worker.grace, on_grace, worker.cfg->grace_ms, 0);
  uv_unref((uv_handle_t *)&worker.grace);
  /* Draining first, so what the drain hook answers (long polls, streams) says "Connection: close"
   * and its clients come back to another worker; then the hook; then the wait for connections. */
  if (worker.srv) http_server_set_draining(worker.srv);
  if (worker.L && bind_http_serving()) bind_core_emit(worker.L, "drain");
  if (worker.L) bind_tcp_emit(worker.L, "drain");
  if (worker.L) bind_redis_emit(worker.L, "drain");
  ws_drain(on_ws_gone); /* every WebSocket gets 1001 */
  if (worker.srv) http_server_drain(worker.srv, close_idle);
}

/* "peer ID SERIAL": the socket that came with the line is our stream to worker ID. */
static void on_peer(const chan_msg_t *m) {
  uv_pipe_t *p = malloc(sizeof *p);
  if (p == NULL) return;
  uv_pipe_init(worker.loop, p, 0);
  int r = chan_accept(&worker.chan, (uv_stream_t *)p);
  if (r != 0) {
    if (r == UV_ENOENT) mf_log("bad control message 'peer %d %lld' ignored", (int)m->id, (long long)m->serial);
    else mf_log("cannot take the mesh socket for worker %d", (int)m->id);
    uv_close((uv_handle_t *)p, (uv_close_cb)free);
    return;
  }
  mesh_add_peer(p, (int)m->id, (long)m->serial);
}

/* Our stream to worker id was dropped at the mesh's cap while both live: ask for a new pair. */
static void ask_repair(int id, long serial) {
  chan_send(&worker.chan, &(chan_msg_t){.type = CHAN_REPAIR, .id = id, .serial = serial});
}

/* "conn": the master hands us a client connection that reached a parked --reuseport socket. */
static void on_conn(void) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (t == NULL) return;
  uv_tcp_init(worker.loop, t);
  uv_os_fd_t fd;
  int r = chan_accept(&worker.chan, (uv_stream_t *)t);
  if (r == 0 && worker.srv && uv_fileno((uv_handle_t *)t, &fd) == 0) {
    int own = dup(fd); /* the handle goes; http.c opens its own on the descriptor */
    if (own >= 0) http_server_adopt(worker.srv, own);
  } else if (r == UV_ENOENT) {
    mf_log("bad control message 'conn' (no connection attached) ignored");
  }
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void on_chan_msg(chan_t *ch, const chan_msg_t *m) {
  (void)ch;
  switch (m->type) {
    case CHAN_STOP: worker_drain("asked by the master", 1); break;
    case CHAN_RETIRE: worker_drain("replaced by a new worker", 0); break;
    case CHAN_PEER: on_peer(m); break;
    case CHAN_LEADER: bind_mesh_leader(worker.L, (int)m->id, (long)m->serial, (long)m->epoch); break;
    case CHAN_CONN: on_conn(); break;
    case CHAN_BAD: mf_log("bad control message '%s' ignored", m->text); break;
    default: mf_log("unknown control message '%s' ignored", chan_name(m->type));
  }
}

static void on_chan_eof(chan_t *ch, int status) {
  (void)status;
  chan_close(ch, NULL);
  worker_drain("the master is gone", 1);
}

static void worker_tell(const chan_msg_t *m) {
  if (chan_send(&worker.chan, m) != 0) mf_log("cannot tell the master '%s'", chan_name(m->type));
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
  if (worker.cfg->error_log) {
    int fd = open_append(worker.cfg->error_log);
    if (fd >= 0) {
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
  }
  if (worker.cfg->access_log && worker.access_fd >= 0) {
    int fd = open_append(worker.cfg->access_log);
    if (fd >= 0) {
      dup2(fd, worker.access_fd); /* same descriptor number: the server keeps using it */
      close(fd);
    } else {
      mf_log("cannot reopen --access-log %s: %s", worker.cfg->access_log, strerror(errno));
    }
  }
}

/* After a crowd of connections has gone, glibc keeps the memory they used (and LuaJIT the garbage
 * their requests left): give it back once the count has fallen to a quarter of the crowd (crowds of
 * 1,000 or more). The crowd is the server's own high-water mark, not a sample of the count, so a crowd
 * that comes and goes between two heartbeats is seen too. */
static void trim_after_crowd(size_t conns) {
  static size_t crowd;
  size_t peak = http_server_take_conn_peak(worker.srv);
  if (peak > crowd) crowd = peak;
  if (crowd < 1000 || conns > crowd / 4) return;
  lua_gc(worker.L, LUA_GCCOLLECT, 0);
  malloc_trim(0);
  crowd = conns;
}

static void on_beat(uv_timer_t *t) {
  (void)t;
  size_t conns = http_server_conn_count(worker.srv);
  worker.sb->beat_ms = scoreboard_now_ms();
  worker.sb->requests = http_server_requests(worker.srv);
  worker.sb->connections = conns;
  worker.sb->yields = cpuslice_yields();
  trim_after_crowd(conns);
}

/* --max-requests, counted here on every response (as gunicorn and Unicorn do): at the limit the worker
 * asks the master for its replacement, and serves on until the replacement is ready and retires it. */
static void on_request_limit(void *data, uint64_t requests) {
  (void)data;
  worker_tell(&(chan_msg_t){.type = CHAN_RECYCLE, .count = (int64_t)requests});
}

/* The limit with jitter (up to a tenth more), so that workers started together do not recycle together. */
static uint64_t request_limit(const mf_config_t *cfg) {
  if (cfg->max_requests <= 0) return 0;
  unsigned seed = (unsigned)getpid() ^ (unsigned)cfg->serial;
  return (uint64_t)cfg->max_requests + (uint64_t)(rand_r(&seed) % (unsigned)(cfg->max_requests / 10 + 1));
}

/* Tells the master why this worker will not start (the first line of err), for `moonfork reload`. */
static void report_error(const char *err) {
  chan_msg_t m = {.type = CHAN_ERROR};
  size_t n = strcspn(err, "\n"), max = sizeof m.text - 7; /* "error " and the newline fit a line */
  memcpy(m.text, err, n < max ? n : max);
  worker_tell(&m);
}

/* The process: its log role, death with the master, the signals the master decides, the CPU slice.
 * Returns 0, or -1 when this process was not started by the master it names. */
static int worker_process(const mf_config_t *cfg) {
  mf_log_set_role((int)cfg->worker_id);
  /* Die with the master: the control channel closing is the main signal, this is the backstop. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (cfg->master_pid > 0 && getppid() != (pid_t)cfg->master_pid) return -1;
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN); /* Ctrl-C reaches the whole process group: the master decides what happens */
  signal(SIGHUP, SIG_IGN);
  if (cfg->sched_slice_us > 0) { /* short slices: see cpuslice.c */
    int r = cpuslice_set(cfg->sched_slice_us);
    if (r < 0) mf_log("--sched-slice: cannot set the CPU time slice: %s", strerror(-r));
  }
  return 0;
}

/* The link to the master: the channel, SIGTERM and SIGUSR1, the scoreboard. Returns 0 or -1. */
static int worker_link(mf_config_t *cfg) {
  worker.cfg = cfg;
  worker.loop = uv_default_loop();
  if (chan_open(&worker.chan, worker.loop, MF_FD_CONTROL, on_chan_msg, on_chan_eof, NULL) != 0) {
    mf_log("no control channel on fd %d: a worker is started by the master, not by hand", MF_FD_CONTROL);
    return -1;
  }
  if (cfg->sched_slice_us > 0) { /* and keeps it: see cpuslice.c */
    int r = cpuslice_keep(worker.loop, cfg->sched_slice_us);
    if (r != 0) mf_log("--sched-slice: cannot keep the slice: %s", uv_strerror(r));
  }
  uv_signal_init(worker.loop, &worker.sigterm);
  uv_signal_start(&worker.sigterm, on_sigterm, SIGTERM);
  uv_signal_init(worker.loop, &worker.sigusr1);
  uv_signal_start(&worker.sigusr1, on_sigusr1, SIGUSR1);
  uv_unref((uv_handle_t *)&worker.sigusr1);
  worker.board = scoreboard_attach();
  if (worker.board && cfg->sb_index > 0) worker.sb = &worker.board->e[cfg->sb_index];
  char err[256]; /* the shared dicts (shdict_region.c); moonfork.shared finds them by name */
  if (fcntl(MF_FD_SHDICT, F_GETFD) >= 0 && shdict_region_attach(MF_FD_SHDICT, err, sizeof err) != 0)
    mf_log("shared dicts: %s", err);
  worker.access_fd = -1;
  return 0;
}

/* The Lua state, the HTTP server and the modules the script sees. Returns 0, or -1 with err set. */
static int worker_load(mf_config_t *cfg, char *err, size_t errlen) {
  http_callbacks_t cb = {bind_http_on_request, bind_http_on_conn_closed, bind_http_on_drain, on_drained,
                         on_request_limit, bind_http_on_body};
  worker.L = luastate_new(cfg->script, "worker");
  if (worker.L == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  worker.srv = http_server_new(worker.loop, cfg, MF_FD_LISTEN, &cb, worker.L, err, errlen);
  if (worker.srv == NULL) return -1;
  bind_core_open(worker.L, worker.loop, cfg);
  bind_http_open(worker.L);
  bind_mesh_open(worker.L);
  bind_tcp_open(worker.L, worker.loop, cfg);
  bind_pg_open(worker.L, worker.loop);
  bind_httpc_open(worker.L);
  bind_pass_open(worker.L, worker.loop);
  bind_redis_open(worker.L, worker.loop);
  bind_ws_open(worker.L, worker.loop);
  mesh_init(worker.loop, &bind_mesh_callbacks, worker.L);
  mesh_set_repair(ask_repair);
  lua_pop(worker.L, 1);
  if (luastate_require(worker.L, "moonfork.sched") != 0) { /* before the script: see sched.lua */
    snprintf(err, errlen, "cannot load moonfork.sched");
    return -1;
  }
  if (worker.sb) http_server_set_scoreboard(worker.srv, worker.board, (int)cfg->sb_index);
  http_server_set_request_limit(worker.srv, request_limit(cfg));
  if (cfg->access_log) {
    worker.access_fd = open_append(cfg->access_log);
    if (worker.access_fd < 0) mf_log("cannot open --access-log %s: %s", cfg->access_log, strerror(errno));
    else http_server_set_access_log(worker.srv, worker.access_fd);
  }
  return 0;
}

/* Runs the script, which must reach moonfork.listen(). Returns 0, or -1 (logged, and told the master). */
static int worker_script(const mf_config_t *cfg) {
  char err[2048];
  if (mf_script_run(worker.L, cfg->script, err, sizeof err) != 0) {
    mf_log_block(err);
    report_error(err);
    return -1;
  }
  if (!bind_http_serving()) {
    snprintf(err, sizeof err, "%s never called moonfork.listen(): nothing to serve", cfg->script);
    mf_log("%s", err);
    report_error(err);
    return -1;
  }
  return 0;
}

/* Accepts, starts the heartbeat and tells the master "ready". Returns 0 or -1. */
static int worker_serve(void) {
  int r = http_server_start(worker.srv);
  if (r != 0) {
    mf_log("cannot accept on the listening socket: %s", uv_strerror(r));
    return -1;
  }
  if (worker.sb) {
    worker.sb->state = MF_SB_READY;
    uv_timer_init(worker.loop, &worker.beat);
    on_beat(&worker.beat);
    uv_timer_start(&worker.beat, on_beat, 100, 100);
    uv_unref((uv_handle_t *)&worker.beat);
  }
  worker_tell(&(chan_msg_t){.type = CHAN_READY});
  return 0;
}

int worker_run(mf_config_t *cfg) {
  char err[2048];
  if (worker_process(cfg) != 0 || worker_link(cfg) != 0) return 1;
  if (worker_load(cfg, err, sizeof err) != 0) {
    mf_log("%s", err);
    return 1;
  }
  if (worker_script(cfg) != 0) return 1;
  if (worker.draining) { /* told to stop while the script was loading */
    worker_exit(0);
    return worker_finish();
  }
  if (worker_serve() != 0) return 1;
  uv_run(worker.loop, UV_RUN_DEFAULT);
  return worker_finish();
}
