/* test_writeq.c -- the send queue (server/writeq.c) over a real socketpair: what goes at once is not
 * queued, writeq_sent grows as the peer reads even inside one large queued write, on_drain comes once
 * under half the high-water mark, on_empty once nothing is left. */
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../server/writeq.h"
#include "test.h"

#define BIG (4u * 1024 * 1024)

static struct {
  uv_loop_t *loop;
  uv_pipe_t pipe;
  writeq_t q;
  int peer;            /* the other end, read by hand */
  int drains, empties;
  uint64_t sent_seen;  /* writeq_sent at the last read step */
  int grew_midway;     /* writeq_sent grew while the queued write was not complete */
  size_t got;
  uv_timer_t step;
} wq;

static void on_drain(writeq_t *q) {
  CHECK(q == &wq.q);
  CHECK(writeq_size(q) <= q->high_water / 2);
  wq.drains++;
}

static void on_empty(writeq_t *q) {
  CHECK(writeq_size(q) == 0);
  CHECK(writeq_sent(q) == q->queued);
  wq.empties++;
  uv_close((uv_handle_t *)&wq.step, NULL);
  uv_close((uv_handle_t *)&wq.pipe, NULL);
}

/* Reads a little from the peer on each turn, like a slow client. */
static void on_step(uv_timer_t *t) {
  (void)t;
  char buf[65536];
  ssize_t n;
  while ((n = read(wq.peer, buf, sizeof buf)) > 0) wq.got += (size_t)n;
  uint64_t sent = writeq_sent(&wq.q);
  if (sent != wq.sent_seen && writeq_size(&wq.q) > 0) wq.grew_midway = 1;
  wq.sent_seen = sent;
}

int main(void) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  int small = 16384;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
  wq.peer = sv[1];
  wq.loop = uv_default_loop();
  uv_pipe_init(wq.loop, &wq.pipe, 0);
  CHECK(uv_pipe_open(&wq.pipe, sv[0]) == 0);
  writeq_init(&wq.q, (uv_stream_t *)&wq.pipe, 256 * 1024, on_drain, NULL);
  wq.q.on_empty = on_empty;

  /* a small write goes at once: nothing queued, no "slow down" */
  uv_buf_t b = uv_buf_init("hello", 5);
  CHECK(writeq_write(&wq.q, &b, 1) == 0);
  CHECK(wq.q.queued == 0 && writeq_size(&wq.q) == 0);

  /* one large write: most of it queued in a single request, over high water */
  static char big[BIG];
  memset(big, 'x', sizeof big);
  b = uv_buf_init(big, sizeof big);
  CHECK(writeq_write(&wq.q, &b, 1) == 1);
  CHECK(wq.q.queued > 0 && writeq_size(&wq.q) == wq.q.queued);
  CHECK(writeq_sent(&wq.q) == 0);

  uv_timer_init(wq.loop, &wq.step);
  uv_timer_start(&wq.step, on_step, 1, 1);
  uv_run(wq.loop, UV_RUN_DEFAULT);

  on_step(NULL); /* what is left in the socket */
  CHECK(wq.got == 5 + BIG);
  CHECK(wq.drains == 1);
  CHECK(wq.empties == 1);
  CHECK(wq.grew_midway);
  close(sv[1]);
  uv_loop_close(wq.loop);
  TEST_DONE();
}
