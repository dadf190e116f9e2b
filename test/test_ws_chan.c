/* test_ws_chan.c -- WebSocket channels (server/ws_chan.c) without a socket: connections that never get
 * one (still waiting for their 101: what they are sent is kept for them) join and leave channels; a
 * publish counts the members it wrote to; a closed connection leaves every channel; many channels
 * grow the table. And the envelope a publish crosses the mesh in (ws_frame.c). */
#include <stdio.h>

#include "../server/ws_chan.h"
#include "../server/ws_frame.h"
#include "test.h"

static int closes;

static void on_message(void *d, ws_conn_t *c, const char *p, size_t n, int b) { (void)d, (void)c, (void)p, (void)n, (void)b; }
static void on_close(void *d, ws_conn_t *c, unsigned code, const char *r, size_t n) {
  (void)d, (void)c, (void)r, (void)n;
  CHECK(code == WS_CLOSE_ABNORMAL);
  closes++;
}
static void on_drain(void *d, ws_conn_t *c) { (void)d, (void)c; }
static const ws_callbacks_t cbs = {on_message, on_close, on_drain};

static ws_conn_t *conn(void) {
  ws_options_t o = {1 << 20, 0, 0, NULL};
  ws_conn_t *c = ws_conn_new(&o);
  CHECK(c != NULL);
  return c;
}

#define S(x) x, sizeof x - 1

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
  test_envelope();
  TEST_DONE();
}
