/* test_ws_chan.c -- WebSocket channels (server/ws_chan.c) without a socket: connections that never get
 * one (still waiting for their 101: what they are sent is kept for them) join and leave channels; a
 * publish counts the members it wrote to; a closed connection leaves every channel; many channels
 * grow the table. And the envelope a publish crosses the mesh in (ws_frame.c). */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../server/ws_chan.h"
#include "../server/ws_frame.h"
#include "test.h"

#define S(x) x, sizeof x - 1

static int closes;
static ws_conn_t *closed[64]; /* in the order they were told */
static int publish_on_close;  /* test_nested: a close listener that publishes "B" to "nest" */

static void on_message(void *d, ws_conn_t *c, const char *p, size_t n, int b) { (void)d, (void)c, (void)p, (void)n, (void)b; }
static void on_close(void *d, ws_conn_t *c, unsigned code, const char *r, size_t n) {
  (void)d, (void)c, (void)r, (void)n;
  CHECK(code == WS_CLOSE_ABNORMAL);
  if (closes < 64) closed[closes] = c;
  closes++;
  if (publish_on_close) ws_chan_publish(S("nest"), WS_OP_TEXT, S("B"));
}
static void on_drain(void *d, ws_conn_t *c) { (void)d, (void)c; }
static const ws_callbacks_t cbs = {on_message, on_close, on_drain};

static ws_conn_t *conn(void) {
  ws_options_t o = {1 << 20, 0, 0, NULL};
  ws_conn_t *c = ws_conn_new(&o);
  CHECK(c != NULL);
  return c;
}


static void test_join_leave(void) {
  ws_conn_t *a = conn(), *b = conn(), *c = conn();
  CHECK(ws_chan_join(a, S("room")) == 1);
  CHECK(ws_chan_join(a, S("room")) == 0); /* a member already */
  CHECK(ws_chan_join(b, S("room")) == 1);
  CHECK(ws_chan_join(c, S("room")) == 1);
  CHECK(ws_chan_join(c, S("lobby")) == 1);
  CHECK(ws_chan_count(S("room")) == 3 && ws_chan_count(S("lobby")) == 1 && ws_chan_count(S("none")) == 0);
  CHECK(ws_chan_count(S("roo")) == 0); /* names are whole */
  CHECK(ws_chan_publish(S("room"), WS_OP_TEXT, S("hello")) == 3);
  CHECK(ws_chan_publish(S("lobby"), WS_OP_BINARY, S("\1\2")) == 1);
  CHECK(ws_chan_publish(S("none"), WS_OP_TEXT, S("x")) == 0);
  /* a leaves from the front of the array: the last member takes its place, and still counts */
  CHECK(ws_chan_leave(a, S("room")) == 1);
  CHECK(ws_chan_leave(a, S("room")) == 0);
  CHECK(ws_chan_leave(a, S("lobby")) == 0);
  CHECK(ws_chan_count(S("room")) == 2);
  CHECK(ws_chan_publish(S("room"), WS_OP_TEXT, S("again")) == 2);
  CHECK(ws_chan_leave(c, S("room")) == 1 && ws_chan_leave(b, S("room")) == 1);
  CHECK(ws_chan_count(S("room")) == 0); /* the empty channel is gone */
  CHECK(ws_chan_join(b, S("room")) == 1); /* and made again */
  /* closing leaves every channel */
  ws_conn_open(b, -1, "", 0);
  ws_conn_open(c, -1, "", 0);
  CHECK(closes == 2);
  CHECK(ws_chan_count(S("room")) == 0 && ws_chan_count(S("lobby")) == 0);
  ws_conn_open(a, -1, "", 0);
  CHECK(closes == 3);
}

/* 1,000 channels of 3 members each (the table grows from 64 buckets), then all closed. */
static void test_many(void) {
  enum { N = 1000 };
  ws_conn_t *cs[3] = {conn(), conn(), conn()};
  char name[32];
  for (int i = 0; i < N; i++) {
    int n = snprintf(name, sizeof name, "ch-%d", i);
    for (int k = 0; k < 3; k++) CHECK(ws_chan_join(cs[k], name, (size_t)n) == 1);
  }
  int ok = 1;
  for (int i = 0; i < N; i++) {
    int n = snprintf(name, sizeof name, "ch-%d", i);
    ok &= ws_chan_count(name, (size_t)n) == 3;
  }
  CHECK(ok);
  CHECK(ws_chan_publish(S("ch-500"), WS_OP_TEXT, S("x")) == 3);
  for (int k = 0; k < 3; k++) ws_conn_open(cs[k], -1, "", 0);
  CHECK(ws_chan_count(S("ch-500")) == 0);
}

/* A connection on a socket whose other end is closed: its first write fails and it is told 1006 at
 * once, in the middle of the publish, so the order of the close callbacks is the order of the writes. */
static ws_conn_t *dead_conn(void) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  close(sv[1]);
  ws_conn_t *c = conn();
  ws_conn_open(c, sv[0], "", 0);
  return c;
}

/* The write order rotates from one publish to the next, and a publish still writes every member once.
 * A member with no socket yet (what it is sent is kept for it) holds the channel open between rounds;
 * each round adds N members whose writes fail, and their close callbacks give the order. */
static void test_rotation(void) {
  enum { N = 8 };
  ws_conn_t *keep = conn();
  CHECK(ws_chan_join(keep, S("rot")) == 1);
  size_t firsts[3];
  for (int round = 0; round < 3; round++) {
    ws_conn_t *m[N];
    for (int i = 0; i < N; i++) {
      m[i] = dead_conn();
      CHECK(ws_chan_join(m[i], S("rot")) == 1);
    }
    closes = 0;
    CHECK(ws_chan_publish(S("rot"), WS_OP_TEXT, S("x")) == 1); /* only keep's write succeeds */
    CHECK(closes == N);
    CHECK(ws_chan_count(S("rot")) == 1);
    /* every dead member told once, in join order from some member on, wrapping round */
    size_t first = N;
    for (size_t i = 0; i < N; i++)
      if (m[i] == closed[0]) first = i;
    CHECK(first < N);
    int cyclic = 1;
    for (size_t k = 0; k < N; k++) cyclic &= closed[k] == m[(first + k) % N];
    CHECK(cyclic);
    firsts[round] = first;
    uv_run(uv_default_loop(), UV_RUN_NOWAIT); /* their close callbacks free them */
  }
  /* keep joined first and was written first in round 0 (its place 0, then the members in order);
   * later rounds started further on */
  CHECK(firsts[0] == 0);
  CHECK(firsts[1] != 0 || firsts[2] != 0);
  ws_conn_open(keep, -1, "", 0);
  CHECK(ws_chan_count(S("rot")) == 0);
}

/* A connection on a live socket: *peer is the other end, to read what it was sent. */
static ws_conn_t *live_conn(int *peer) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  *peer = sv[1];
  ws_conn_t *c = conn();
  ws_conn_open(c, sv[0], "", 0);
  return c;
}

/* A close listener that publishes to the channel being published to (a chat's "X left"): its message
 * comes after the one being written, for every member, also those not written yet when it closed. */
static void test_nested(void) {
  int p1, p2;
  ws_conn_t *a = live_conn(&p1), *dead = dead_conn(), *b = live_conn(&p2);
  CHECK(ws_chan_join(a, S("nest")) == 1 && ws_chan_join(dead, S("nest")) == 1 && ws_chan_join(b, S("nest")) == 1);
  closes = 0;
  publish_on_close = 1;
  ws_chan_publish(S("nest"), WS_OP_TEXT, S("A")); /* a new channel starts at its first member: a, dead, b */
  publish_on_close = 0;
  CHECK(closes == 1);
  char buf[16];
  CHECK(read(p1, buf, sizeof buf) == 6 && buf[2] == 'A' && buf[5] == 'B');
  CHECK(read(p2, buf, sizeof buf) == 6 && buf[2] == 'A' && buf[5] == 'B');
  close(p1); /* a and b read the end and close */
  close(p2);
  for (int i = 0; i < 100 && closes < 3; i++) uv_run(uv_default_loop(), UV_RUN_NOWAIT);
  CHECK(closes == 3);
  CHECK(ws_chan_count(S("nest")) == 0);
  uv_run(uv_default_loop(), UV_RUN_NOWAIT);
  (void)a, (void)b;
}

static void test_envelope(void) {
  uint8_t head[WS_ENVELOPE_HEAD];
  char msg[64];
  ws_envelope_head(head, WS_OP_BINARY, 4);
  memcpy(msg, head, sizeof head);
  memcpy(msg + 5, "roomdata", 8);
  ws_envelope_t e;
  CHECK(ws_envelope_parse(msg, 13, &e) == 0);
  CHECK(e.opcode == WS_OP_BINARY && e.nlen == 4 && memcmp(e.name, "room", 4) == 0);
  CHECK(e.dlen == 4 && memcmp(e.data, "data", 4) == 0);
  CHECK(ws_envelope_parse(msg, 9, &e) == 0 && e.dlen == 0); /* empty data */
  CHECK(ws_envelope_parse(msg, 8, &e) == -1);               /* the name cut short */
  CHECK(ws_envelope_parse(msg, 4, &e) == -1);               /* the head cut short */
  CHECK(ws_envelope_parse("hello, world", 12, &e) == -1);    /* a user's message */
  msg[2] = WS_OP_PING;
  CHECK(ws_envelope_parse(msg, 13, &e) == -1);
  ws_envelope_head(head, WS_OP_TEXT, 0);
  memcpy(msg, head, sizeof head);
  CHECK(ws_envelope_parse(msg, 13, &e) == -1); /* no name */
  ws_envelope_head(head, WS_OP_TEXT, WS_CHANNEL_MAX + 1);
  memcpy(msg, head, sizeof head);
  CHECK(ws_envelope_parse(msg, 13, &e) == -1);
}

int main(void) {
  ws_init(uv_default_loop(), &cbs, NULL);
  test_join_leave();
  test_many();
  test_rotation();
  test_nested();
  test_envelope();
  TEST_DONE();
}
