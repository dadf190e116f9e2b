/* fuzz_http_conn.c -- libFuzzer harness for a whole server connection (server/http_conn.c, its parser,
 * responses and error answers), driven through the server's public API (http.h) on a real libuv loop.
 *
 * No network: each input gets a socketpair; the server adopts one end (http_server_adopt, as for a
 * connection the master hands on), the harness is the client on the other. The first byte of the
 * input chooses: bits 0-5 the size of the pieces the rest is written in, a loop turn between pieces
 * (0: all at once); bit 6 answers requests later, from the harness between loop turns, instead of from
 * inside the handler (so pipelined input waits); bit 7 streams the answer in two writes. The client then
 * shuts its side down and the loop runs until the connection is gone.
 *
 * Checked beyond ASan, UBSan and LeakSanitizer (a connection not freed leaks): every connection ends,
 * at once (no timer is needed to end one, since the client has closed), and the server never answers
 * more requests than it handed to the handler plus one error answer.
 *
 * Run it with -close_fd_mask=2: the server logs every refused request on stderr. Build and run: make
 * fuzz (tools/run-fuzz), seeds in test/fuzz/corpus/ (shared with fuzz_http.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "http.h"

#define FUZZ_CHECK(cond)                                                               \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "fuzz_http_conn.c:%d: broken promise: %s\n", __LINE__, #cond); \
      abort();                                                                         \
    }                                                                                  \
  } while (0)

#define FUZZ_MAX_DEFERRED 64

static struct {
  uv_loop_t loop;
  mf_config_t cfg;
  http_server_t *srv;
  int listen_fd;     /* never started: http_server_new wants one */
  int defer, stream; /* of the current input */
  int requests;      /* handed to the handler, this input */
  int ndeferred;
  struct {
    http_conn_t *c;
    uint32_t gen;
  } deferred[FUZZ_MAX_DEFERRED];
} fuzz;

static void fuzz_answer(http_conn_t *c, uint32_t gen) {
  static const char head[] = "Content-Type: text/plain\r\n";
  if (fuzz.stream && http_conn_respond(c, gen, 200, head, sizeof head - 1, "part ", 5, 0, -1, 0) < 0) return;
  http_conn_respond(c, gen, 200, fuzz.stream ? "" : head, fuzz.stream ? 0 : sizeof head - 1, "ok\n", 3, 1, -1, 0);
}

static int fuzz_on_request(void *data, http_conn_t *c, uint32_t gen, const http_request_t *req) {
  (void)data;
  FUZZ_CHECK(req->method != NULL && (req->url_len == 0 || req->url != NULL));
  FUZZ_CHECK(req->http_major == 1 && req->http_minor <= 1);
  fuzz.requests++;
  *http_conn_user_ref(c) = 1; /* so that on_conn_closed tells us when it goes */
  if (fuzz.defer && fuzz.ndeferred < FUZZ_MAX_DEFERRED) {
    fuzz.deferred[fuzz.ndeferred].c = c;
    fuzz.deferred[fuzz.ndeferred++].gen = gen;
    return 0;
  }
  fuzz_answer(c, gen);
  return 0;
}

static void fuzz_on_conn_closed(void *data, http_conn_t *c, int in_flight) {
  (void)data;
  (void)in_flight;
  for (int i = 0; i < fuzz.ndeferred; i++) /* a stale gen is refused; a freed conn must not be used */
    if (fuzz.deferred[i].c == c) fuzz.deferred[i].c = NULL;
}

static const http_callbacks_t fuzz_callbacks = {fuzz_on_request, fuzz_on_conn_closed, NULL, NULL, NULL};

static void fuzz_init(void) {
  signal(SIGPIPE, SIG_IGN); /* as a worker does: a write to a closed peer is an error, not a death */
  uv_loop_init(&fuzz.loop);
  mf_config_defaults(&fuzz.cfg);
  fuzz.cfg.max_body = 4096;
  fuzz.cfg.max_header_size = 2048;
  int sv[2];
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  close(sv[1]);
  fuzz.listen_fd = sv[0];
  char err[256];
  fuzz.srv = http_server_new(&fuzz.loop, &fuzz.cfg, fuzz.listen_fd, &fuzz_callbacks, NULL, err, sizeof err);
  FUZZ_CHECK(fuzz.srv != NULL);
}

/* Reads what the server sent so far; counts the final status lines at the start of a read or of a line
 * (enough for our own answers, whose bodies hold no "HTTP/1.1 "). */
static void fuzz_drain(int fd, int *responses) {
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    for (ssize_t i = 0; i + 9 <= n; i++)
      if (memcmp(buf + i, "HTTP/1.1 ", 9) == 0 && (i == 0 || buf[i - 1] == '\n') && (i + 9 == n || buf[i + 9] != '1'))
        ++*responses; /* (not "100 Continue") */
}

/* Runs the loop without blocking until nothing is left to do at once. */
static void fuzz_turn(void) {
  for (int i = 0; i < 8; i++) uv_run(&fuzz.loop, UV_RUN_NOWAIT);
}

static void fuzz_answer_deferred(void) {
  for (int i = 0; i < fuzz.ndeferred; i++)
    if (fuzz.deferred[i].c != NULL) fuzz_answer(fuzz.deferred[i].c, fuzz.deferred[i].gen);
  fuzz.ndeferred = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if (fuzz.srv == NULL) fuzz_init();
  uint8_t ctl = data[0];
  const char *in = (const char *)data + 1;
  size_t left = size - 1, step = ctl & 63;
  fuzz.defer = (ctl >> 6) & 1;
  fuzz.stream = ctl >> 7;
  fuzz.requests = fuzz.ndeferred = 0;
  int sv[2], responses = 0;
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  http_server_adopt(fuzz.srv, sv[0]);
  while (left > 0) {
    size_t piece = step && left > step ? step : left;
    ssize_t w = send(sv[1], in, piece, MSG_NOSIGNAL);
    if (w <= 0) break; /* (the server closed: the rest is never read) */
    in += w;
    left -= (size_t)w;
    fuzz_turn();
    fuzz_answer_deferred();
    fuzz_drain(sv[1], &responses);
  }
  shutdown(sv[1], SHUT_WR);
  for (int i = 0; i < 64 && http_server_conn_count(fuzz.srv) > 0; i++) {
    fuzz_turn();
    fuzz_answer_deferred();
    fuzz_drain(sv[1], &responses);
  }
  fuzz_turn(); /* the close callbacks */
  FUZZ_CHECK(http_server_conn_count(fuzz.srv) == 0);
  fuzz_drain(sv[1], &responses);
  FUZZ_CHECK(responses <= fuzz.requests + 1);
  close(sv[1]);
  return 0;
}
