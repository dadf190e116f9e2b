/* test_http_takeover.c -- a connection taken over after an Upgrade (server/http_conn.c): the 101 head
 * goes out through HTTP, then the new owner gets the socket and the bytes read past the request. A
 * real loop and a real TCP connection on 127.0.0.1, no Lua. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../server/http.h"
#include "../server/util.h"
#include "test.h"

static struct {
  uv_loop_t *loop;
  uv_tcp_t client;
  uv_connect_t connect;
  uv_write_t write;
  mf_buf_t got;          /* what the client read */
  char rest[64];         /* what the new owner was handed */
  int taken_fd, requests, takeover_r;
  size_t big;            /* bytes of an extra header: enough that the 101 head is still queued */
  uv_timer_t guard;
} takeover;

static void on_taken(void *arg, int fd, const char *rest, size_t rest_len) {
  (void)arg;
  takeover.taken_fd = fd;
  snprintf(takeover.rest, sizeof takeover.rest, "%.*s", (int)rest_len, rest);
  if (fd >= 0) {
    ssize_t n = write(fd, "hello", 5); /* the new protocol speaks */
    (void)n;
    close(fd);
  }
}

static int on_request(void *data, http_conn_t *c, uint32_t gen, const http_request_t *req) {
  (void)data;
  (void)req;
  takeover.requests++;
  mf_buf_t head;
  mf_buf_init(&head);
  mf_buf_append(&head, "Upgrade: test\r\n", 15);
  if (takeover.big) {
    mf_buf_append(&head, "X-Big: ", 7);
    mf_buf_reserve(&head, takeover.big + 2);
    memset(head.data + head.len, 'a', takeover.big);
    head.len += takeover.big;
    mf_buf_append(&head, "\r\n", 2);
  }
  CHECK(http_conn_takeover(c, gen, on_taken, NULL) == UV_EINVAL); /* the 101 first */
  CHECK(http_conn_respond(c, gen, 101, head.data, head.len, "", 0, 0, -1, 0) >= 0);
  mf_buf_free(&head);
  takeover.takeover_r = http_conn_takeover(c, gen, on_taken, NULL);
  CHECK(http_conn_takeover(c, gen, on_taken, NULL) == UV_EPIPE); /* once */
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  static char b[4096];
  (void)suggested;
  *buf = uv_buf_init(b, sizeof b);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n > 0) mf_buf_append(&takeover.got, buf->base, (size_t)n);
  if (n < 0) { /* both copies of the socket are closed: done */
    uv_close((uv_handle_t *)s, NULL);
    uv_stop(takeover.loop);
  }
}

static void on_connect(uv_connect_t *req, int status) {
  CHECK(status == 0);
  static char request[] = "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\nEARLY";
  uv_buf_t b = uv_buf_init(request, sizeof request - 1);
  uv_write(&takeover.write, req->handle, &b, 1, NULL);
  uv_read_start(req->handle, on_alloc, on_read);
}

static void on_guard(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "timed out\n");
  test_failures++;
  uv_stop(takeover.loop);
}

static int listen_local(struct sockaddr_in *sa) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  socklen_t sl = sizeof *sa;
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)sa, sizeof *sa) != 0 || listen(fd, 8) != 0 ||
      getsockname(fd, (struct sockaddr *)sa, &sl) != 0)
    return -1;
  return fd;
}

/* One upgrade: connects, sends the request and EARLY bytes, reads until both sides closed. */
static void scenario(const struct sockaddr_in *sa, size_t big) {
  takeover.big = big;
  takeover.taken_fd = -100;
  takeover.rest[0] = '\0';
  mf_buf_init(&takeover.got);
  uv_tcp_init(takeover.loop, &takeover.client);
  uv_tcp_connect(&takeover.connect, &takeover.client, (const struct sockaddr *)sa, on_connect);
  uv_timer_start(&takeover.guard, on_guard, 10000, 0);
  uv_run(takeover.loop, UV_RUN_DEFAULT);
  uv_timer_stop(&takeover.guard);
  mf_buf_append(&takeover.got, "", 1);
  const char *got = takeover.got.data ? takeover.got.data : "";
  size_t n = strlen(got);
  CHECK(takeover.takeover_r == 0);
  CHECK(takeover.taken_fd >= 0);
  CHECK_STR(takeover.rest, "EARLY");
  CHECK(strncmp(got, "HTTP/1.1 101 Switching Protocols\r\n", 34) == 0);
  CHECK(strstr(got, "\r\nUpgrade: test\r\n") != NULL);
  CHECK(strstr(got, "Connection: close") == NULL);
  CHECK(n > 9 && strcmp(got + n - 9, "\r\n\r\nhello") == 0); /* the head whole, then the new owner's bytes */
  CHECK(n > big);
  mf_buf_free(&takeover.got);
}

int main(void) {
  struct sockaddr_in sa;
  int lfd = listen_local(&sa);
  if (lfd < 0) return 77; /* no loopback here: skipped */
  mf_config_t cfg;
  mf_config_defaults(&cfg);
  takeover.loop = uv_default_loop();
  http_callbacks_t cb = {.on_request = on_request};
  char err[256];
  http_server_t *srv = http_server_new(takeover.loop, &cfg, lfd, &cb, NULL, err, sizeof err);
  CHECK(srv != NULL);
  if (srv == NULL) TEST_DONE();
  CHECK(http_server_start(srv) == 0);
  uv_timer_init(takeover.loop, &takeover.guard);
  uv_unref((uv_handle_t *)&takeover.guard);
  scenario(&sa, 0);              /* the 101 went at once: handed over at once */
  scenario(&sa, 8 * 1024 * 1024); /* the 101 is still queued: handed over once it is out */
  CHECK(takeover.requests == 2 && http_server_requests(srv) == 2);
  CHECK(http_server_conn_count(srv) == 0);
  TEST_DONE();
}
