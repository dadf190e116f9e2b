/* control.c -- the control socket: a Unix-domain socket the master answers, and the client for it.
 *
 * The protocol is one request line ("status", "reload", "scale 4", "stop") and one reply, a JSON object
 * on one line, after which the master closes the connection. The socket is created with mode 0600 (the
 * umask is tightened around bind, so there is no window where it is open to others). */
#include "control.h"

#include <errno.h>
#include <poll.h>
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

struct control_conn_s {
  uv_pipe_t pipe;
  mf_buf_t in;
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
} control;

static void conn_closed(uv_handle_t *h) {
  control_conn_t *c = h->data;
  mf_buf_free(&c->in);
  free(c);
}

static void conn_close(control_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->pipe, conn_closed);
}

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
  c->handled = 1;
  control.handler(c, c->in.data);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  control_conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  uv_pipe_init(control.loop, &c->pipe, 0);
  c->pipe.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
    conn_close(c);
    return;
  }
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

/* Connects to path and sends request as one line. Returns the socket, or -1 with err set. */
static int request_send(const char *path, const char *request, char *err, size_t errlen) {
  struct sockaddr_un sa;
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

char *control_request(const char *path, const char *request, int timeout_ms, char *err, size_t errlen) {
  int fd = request_send(path, request, err, errlen);
  if (fd < 0) return NULL;
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
        close(fd);
        mf_buf_append(&out, "", 1);
        return out.data;
      }
      snprintf(err, errlen, "the master closed the connection without answering");
      break;
    }
    mf_buf_append(&out, buf, (size_t)got);
  }
  close(fd);
  mf_buf_free(&out);
  return NULL;
}
