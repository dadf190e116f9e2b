/* control.c -- the control socket: a Unix-domain socket the master answers, and the client for it.
 *
 * The protocol is one request line ("status", "reload", "scale 4", "stop", "hello") and one reply, a
 * JSON object on one line, after which the master closes the connection. The socket is created with
 * mode 0600 (the umask is tightened around bind, so there is no window where it is open to others).
 *
 * Who answers matters as much as who asks: a socket in a directory others can write (/tmp) can be
 * created first by another user, and a client that trusted it would report "stopping" while the
 * server ran on. So the default socket lives in a directory only this user can write (made 0700 when
 * missing, refused when someone else owns it or may write it), and the client checks the process it
 * reached: the kernel's word on its uid and pid (SO_PEERCRED), then a "hello" that names the pid
 * and port, against what the command line expects. A client that connects and says nothing is
 * closed after CONTROL_IDLE_MS, and at most CONTROL_MAX_CONNS are open at once. */
#define _GNU_SOURCE /* struct ucred */
#include "control.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define CONTROL_MAX_LINE 4096
#define CONTROL_IDLE_MS 5000 /* to send the request line */
#define CONTROL_MAX_CONNS 64

struct control_conn_s {
  uv_pipe_t pipe;
  uv_timer_t idle;  /* until the request line is in */
  mf_buf_t in;
  int handles_open;
  int handled;  /* the request went to the handler, which now holds the connection */
  int answered; /* control_reply was called */
  int gone;     /* the client left: the reply, when it comes, only closes */
  int closing;
};

static struct {
  uv_loop_t *loop;
  uv_pipe_t server;
  control_handler_t handler;
  char path[108];
  int open;
  int nconns;
  int refusing; /* at the cap: logged once until a connection closes */
} control;

static void conn_closed(uv_handle_t *h) {
  control_conn_t *c = h->data;
  if (--c->handles_open > 0) return;
  mf_buf_free(&c->in);
  free(c);
  control.nconns--;
  control.refusing = 0;
}

static void conn_close(control_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->pipe, conn_closed);
  uv_close((uv_handle_t *)&c->idle, conn_closed);
}

static void on_idle(uv_timer_t *t) { conn_close(t->data); }

typedef struct {
  uv_write_t req;
  control_conn_t *conn;
  char data[];
} reply_t;

static void on_reply_written(uv_write_t *req, int status) {
  reply_t *r = mf_container_of(req, reply_t, req);
  (void)status;
  conn_close(r->conn);
  free(r);
}

void control_reply(control_conn_t *c, const char *text) {
  if (c->answered) return;
  c->answered = 1;
  if (c->gone) {
    conn_close(c);
    return;
  }
  size_t n = strlen(text);
  reply_t *r = malloc(sizeof *r + n + 1);
  if (r == NULL) {
    conn_close(c);
    return;
  }
  memcpy(r->data, text, n);
  r->data[n] = '\n';
  r->conn = c;
  uv_buf_t b = uv_buf_init(r->data, (unsigned)n + 1);
  if (uv_write(&r->req, (uv_stream_t *)&c->pipe, &b, 1, on_reply_written) != 0) {
    free(r);
    conn_close(c);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char b[1024];
  (void)h, (void)suggested;
  *buf = uv_buf_init(b, sizeof b);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  control_conn_t *c = s->data;
  if (n < 0) {
    /* The client left. The connection stays until its answer comes (the handler holds it; a reload
     * may still be running), and the answer is dropped. */
    uv_read_stop(s);
    c->gone = 1;
    if (!c->handled || c->answered) conn_close(c);
    return;
  }
  if (c->in.len + (size_t)n > CONTROL_MAX_LINE) {
    control_reply(c, "{\"ok\":false,\"error\":\"request line too long\"}");
    return;
  }
  mf_buf_append(&c->in, buf->base, (size_t)n);
  char *nl = memchr(c->in.data, '\n', c->in.len);
  if (nl == NULL) return;
  *nl = '\0';
  if (nl > c->in.data && nl[-1] == '\r') nl[-1] = '\0';
  uv_read_stop(s);
  uv_timer_stop(&c->idle); /* the handler holds it now (a reload may take long) */
  c->handled = 1;
  control.handler(c, c->in.data);
}

/* Over the cap: the connection is taken from the queue and closed at once. */
static void refuse(uv_stream_t *server) {
  uv_pipe_t *p = malloc(sizeof *p);
  if (p == NULL) return;
  uv_pipe_init(control.loop, p, 0);
  uv_accept(server, (uv_stream_t *)p);
  uv_close((uv_handle_t *)p, (uv_close_cb)free);
  if (!control.refusing) mf_log("control socket: %d connections open, refusing more", CONTROL_MAX_CONNS);
  control.refusing = 1;
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  if (control.nconns >= CONTROL_MAX_CONNS) {
    refuse(server);
    return;
  }
  control_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  control.nconns++;
  uv_pipe_init(control.loop, &c->pipe, 0);
  uv_timer_init(control.loop, &c->idle);
  c->pipe.data = c->idle.data = c;
  c->handles_open = 2;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
    conn_close(c);
    return;
  }
  uv_timer_start(&c->idle, on_idle, CONTROL_IDLE_MS, 0);
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* Is something answering at path? */
static int socket_alive(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int alive = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return alive;
}

int control_server_start(uv_loop_t *loop, const char *path, control_handler_t handler, char *err, size_t errlen) {
  struct stat st;
  if (strlen(path) >= sizeof control.path) {
    snprintf(err, errlen, "control socket path too long: %s", path);
    return -1;
  }
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      snprintf(err, errlen, "%s exists and is not a socket", path);
      return -1;
    }
    if (socket_alive(path)) {
      snprintf(err, errlen, "another master answers on %s", path);
      return -1;
    }
    unlink(path); /* left by a master that died */
  }
  control.loop = loop;
  control.handler = handler;
  uv_pipe_init(loop, &control.server, 0);
  mode_t old = umask(0077);
  int r = uv_pipe_bind(&control.server, path);
  umask(old);
  if (r == 0) r = uv_listen((uv_stream_t *)&control.server, 16, on_connection);
  if (r != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", path, uv_strerror(r));
    uv_close((uv_handle_t *)&control.server, NULL);
    return -1;
  }
  chmod(path, 0600);
  snprintf(control.path, sizeof control.path, "%s", path);
  control.open = 1;
  uv_unref((uv_handle_t *)&control.server);
  return 0;
}

void control_server_stop(void) {
  if (control.open) unlink(control.path);
  control.open = 0;
}

/* ---- where the socket lives ------------------------------------------------------------------- */

static int path_fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

/* dir must be a directory (not a link to one) that this user owns and nobody else may write. */
static int dir_private(const char *dir, int create, char *err, size_t errlen) {
  struct stat st;
  if (create && mkdir(dir, 0700) != 0 && errno != EEXIST)
    return path_fail(err, errlen, "cannot create %s: %s", dir, strerror(errno));
  if (lstat(dir, &st) != 0) return path_fail(err, errlen, "%s: %s", dir, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return path_fail(err, errlen, "refusing %s: not a directory", dir);
  if (st.st_uid != geteuid())
    return path_fail(err, errlen, "refusing %s: it belongs to uid %d, not to uid %d", dir, (int)st.st_uid,
                     (int)geteuid());
  if (st.st_mode & 022)
    return path_fail(err, errlen, "refusing %s: group or others may write it (mode %03o)", dir,
                     (unsigned)(st.st_mode & 0777));
  return 0;
}

int control_path(const char *given, long port, int create, char *buf, size_t len, char *err, size_t errlen) {
  char dir[512];
  if (given) {
    snprintf(buf, len, "%s", given);
    return 0;
  }
  const char *run = getenv("XDG_RUNTIME_DIR");
  if (run && *run)
    snprintf(dir, sizeof dir, "%s/moonfork", run);
  else if (geteuid() == 0)
    snprintf(dir, sizeof dir, "/run"); /* root's own: nobody else writes there */
  else
    snprintf(dir, sizeof dir, "/tmp/moonfork-%d", (int)geteuid());
  if ((size_t)snprintf(buf, len, "%s/moonfork-%ld.sock", dir, port) >= len)
    return path_fail(err, errlen, "control socket path too long: %s/moonfork-%ld.sock", dir, port);
  if (strcmp(dir, "/run") == 0) return 0;
  return dir_private(dir, create, err, errlen);
}

/* ---- the client ------------------------------------------------------------------------------- */

/* Connects to path and sends request as one line; *peer gets the kernel's word on who listens there,
 * which must be this user. Returns the socket, or -1 with err set. */
static int request_send(const char *path, const char *request, struct ucred *peer, char *err, size_t errlen) {
  struct sockaddr_un sa;
  socklen_t clen = sizeof *peer;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa.sun_path) {
    snprintf(err, errlen, "control socket path too long: %s", path);
    return -1;
  }
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    snprintf(err, errlen, "cannot reach the master at %s: %s (is it running? --control or --port selects it)",
             path, strerror(errno));
    goto fail_close;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, peer, &clen) != 0) {
    snprintf(err, errlen, "cannot tell who answers at %s: %s", path, strerror(errno));
    goto fail_close;
  }
  if (peer->uid != geteuid()) {
    snprintf(err, errlen, "%s is answered by pid %d of uid %d, not by a master of yours (uid %d): refusing it",
             path, (int)peer->pid, (int)peer->uid, (int)geteuid());
    goto fail_close;
  }
  struct iovec iov[2] = {{(void *)request, strlen(request)}, {"\n", 1}};
  if (writev(fd, iov, 2) != (ssize_t)(iov[0].iov_len + 1)) {
    snprintf(err, errlen, "cannot send to %s: %s", path, strerror(errno));
    goto fail_close;
  }
  return fd;
fail_close:
  if (fd >= 0) close(fd);
  return -1;
}

/* Reads the reply on fd until the master closes it. Returns it (malloc'ed), or NULL with err set. */
static char *reply_read(int fd, const char *path, int timeout_ms, char *err, size_t errlen) {
  mf_buf_t out;
  mf_buf_init(&out);
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r == 0) {
      snprintf(err, errlen, "no answer from %s within %d s", path, timeout_ms / 1000);
      break;
    }
    if (r < 0 && errno == EINTR) continue;
    char buf[4096];
    ssize_t got = read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (out.len > 0) {
        mf_buf_append(&out, "", 1);
        return out.data;
      }
      snprintf(err, errlen, "the master closed the connection without answering");
      break;
    }
    mf_buf_append(&out, buf, (size_t)got);
  }
  mf_buf_free(&out);
  return NULL;
}

/* One request, one reply; *peer says who answered. */
static char *exchange(const char *path, const char *request, struct ucred *peer, int timeout_ms, char *err,
                      size_t errlen) {
  int fd = request_send(path, request, peer, err, errlen);
  if (fd < 0) return NULL;
  char *reply = reply_read(fd, path, timeout_ms, err, errlen);
  close(fd);
  return reply;
}

/* The number after "key": in a reply, or -1. */
static long reply_number(const char *reply, const char *key) {
  const char *at = strstr(reply, key);
  long n = -1;
  if (at == NULL || sscanf(at + strlen(key), "%ld", &n) != 1) return -1;
  return n;
}

/* The hello: is the process at path the master the command line means? Returns its pid, or -1 with
 * err set. */
static long hello(const char *path, const control_expect_t *expect, int timeout_ms, char *err, size_t errlen) {
  struct ucred peer;
  char *reply = exchange(path, "hello", &peer, timeout_ms, err, errlen);
  if (reply == NULL) return -1;
  long pid = reply_number(reply, "\"pid\":"), port = reply_number(reply, "\"port\":");
  int is_hello = strstr(reply, "\"hello\":\"moonfork\"") != NULL;
  free(reply);
  if (!is_hello || pid != (long)peer.pid)
    return path_fail(err, errlen, "the process at %s (pid %d) does not answer as a moonfork master: not "
                     "sending it anything", path, (int)peer.pid);
  if (expect->pid > 0 && pid != expect->pid)
    return path_fail(err, errlen, "the master at %s is pid %ld, not pid %ld (the pid file): refusing it", path,
                     pid, expect->pid);
  if (expect->port > 0 && port != expect->port)
    return path_fail(err, errlen, "the master at %s serves port %ld, not port %ld: refusing it", path, port,
                     expect->port);
  return pid;
}

char *control_request(const char *path, const char *request, const control_expect_t *expect, int timeout_ms,
                      char *err, size_t errlen) {
  struct ucred peer;
  long pid = hello(path, expect, timeout_ms, err, errlen);
  if (pid < 0) return NULL;
  char *reply = exchange(path, request, &peer, timeout_ms, err, errlen);
  if (reply != NULL && (long)peer.pid != pid) { /* another process took the path in between */
    free(reply);
    path_fail(err, errlen, "the master at %s changed from pid %ld to pid %d: refusing the answer", path, pid,
              (int)peer.pid);
    return NULL;
  }
  return reply;
}
