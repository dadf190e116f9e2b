/* test_chan.c -- unit tests for server/chan.c: every message parsed, malformed lines rejected, and
 * format -> parse round trips; the line reader fed in pieces. */
#include <stdint.h>

#include "../server/chan.h"
#include "test.h"

static void test_parse_each(void) {
  chan_msg_t m;
  CHECK(chan_parse("ready", &m) == 0 && m.type == CHAN_READY);
  CHECK(chan_parse("retire", &m) == 0 && m.type == CHAN_RETIRE);
  CHECK(chan_parse("stop", &m) == 0 && m.type == CHAN_STOP);
  CHECK(chan_parse("conn", &m) == 0 && m.type == CHAN_CONN);
  CHECK(chan_parse("repair 2 9", &m) == 0 && m.type == CHAN_REPAIR && m.id == 2 && m.serial == 9);
  CHECK(chan_parse("peer 3 17", &m) == 0 && m.type == CHAN_PEER && m.id == 3 && m.serial == 17);
  CHECK(chan_parse("leader 2 5 9", &m) == 0 && m.type == CHAN_LEADER && m.id == 2 && m.serial == 5 &&
        m.epoch == 9);
  CHECK(chan_parse("recycle 20", &m) == 0 && m.type == CHAN_RECYCLE && m.count == 20);
  CHECK(chan_parse("recycle 0", &m) == 0 && m.count == 0);
  CHECK(chan_parse("recycle 9223372036854775807", &m) == 0 && m.count == INT64_MAX);
  CHECK(chan_parse("error app.lua:3: boom", &m) == 0 && m.type == CHAN_ERROR);
  CHECK_STR(m.text, "app.lua:3: boom");
  CHECK(chan_parse("error", &m) == 0 && m.type == CHAN_ERROR && m.text[0] == '\0');
  CHECK(chan_parse("peer 1024 1", &m) == 0 && m.id == 1024);
  CHECK(chan_has_fd(CHAN_PEER) && chan_has_fd(CHAN_CONN) && !chan_has_fd(CHAN_READY) && !chan_has_fd(CHAN_BAD));
  CHECK_STR(chan_name(CHAN_LEADER), "leader");
}

static void test_parse_malformed(void) {
  static const char *const bad[] = {
      "",                                /* empty */
      "hello",                           /* unknown name */
      "Ready",                           /* names are lower case */
      "ready ",                          /* extra: a trailing space */
      "ready now",                       /* extra argument */
      "readyx",                          /* a longer name */
      "stop 1",                          /* extra argument */
      "conn 3",                          /* extra argument */
      "errorx",                          /* not "error" */
      "peer",                            /* missing arguments */
      "peer 3",                          /* missing serial */
      "peer 3 ",                         /* empty serial */
      "peer 3 17 1",                     /* extra argument */
      "peer  3 17",                      /* two spaces */
      "peer x 17",                       /* not a number */
      "peer 3 17x",                      /* trailing junk */
      "peer -3 17",                      /* negative */
      "peer +3 17",                      /* a sign */
      "peer 0 17",                       /* id out of range */
      "peer 1025 17",                    /* id out of range */
      "peer 3 0",                        /* serial out of range */
      "leader 1 2",                      /* missing epoch */
      "leader 1 2 0",                    /* epoch out of range */
      "leader 1 2 3 4",                  /* extra */
      "recycle",                         /* missing count */
      "recycle 1.5",                     /* not an integer */
      "recycle 9223372036854775808",     /* past INT64_MAX */
      "recycle 99999999999999999999999", /* overflow */
      " ready",                          /* leading space */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    chan_msg_t m;
    int r = chan_parse(bad[i], &m);
    if (r != -1 || m.type != CHAN_BAD) fprintf(stderr, "accepted: '%s'\n", bad[i]);
    CHECK(r == -1 && m.type == CHAN_BAD);
    CHECK_STR(m.text, bad[i]);
  }
}

static void round_trip(const chan_msg_t *m, const char *want) {
  char line[CHAN_LINE_MAX + 1];
  int n = chan_format(m, line, sizeof line);
  CHECK(n == (int)strlen(want));
  CHECK_STR(line, want);
  if (n <= 0) return;
  line[n - 1] = '\0';
  chan_msg_t back;
  CHECK(chan_parse(line, &back) == 0);
  CHECK(back.type == m->type && back.id == m->id && back.serial == m->serial && back.epoch == m->epoch &&
        back.count == m->count);
  CHECK_STR(back.text, m->text);
}

static void test_round_trip(void) {
  round_trip(&(chan_msg_t){.type = CHAN_READY}, "ready\n");
  round_trip(&(chan_msg_t){.type = CHAN_RETIRE}, "retire\n");
  round_trip(&(chan_msg_t){.type = CHAN_STOP}, "stop\n");
  round_trip(&(chan_msg_t){.type = CHAN_CONN}, "conn\n");
  round_trip(&(chan_msg_t){.type = CHAN_PEER, .id = 4, .serial = 12}, "peer 4 12\n");
  round_trip(&(chan_msg_t){.type = CHAN_LEADER, .id = 1, .serial = 2, .epoch = 3}, "leader 1 2 3\n");
  round_trip(&(chan_msg_t){.type = CHAN_RECYCLE, .count = 21}, "recycle 21\n");
  round_trip(&(chan_msg_t){.type = CHAN_ERROR, .text = "x.lua:1: '<eof>' expected"},
             "error x.lua:1: '<eof>' expected\n");
}

static void test_format_rejects(void) {
  char line[CHAN_LINE_MAX + 1];
  CHECK(chan_format(&(chan_msg_t){.type = CHAN_BAD}, line, sizeof line) == -1);
  CHECK(chan_format(&(chan_msg_t){.type = CHAN_NTYPES}, line, sizeof line) == -1);
  CHECK(chan_format(&(chan_msg_t){.type = CHAN_PEER, .id = 0, .serial = 1}, line, sizeof line) == -1);
  CHECK(chan_format(&(chan_msg_t){.type = CHAN_ERROR, .text = "two\nlines"}, line, sizeof line) == -1);
  CHECK(chan_format(&(chan_msg_t){.type = CHAN_READY}, line, 6) == -1); /* "ready\n" and its NUL need 7 */
  CHECK(chan_format(&(chan_msg_t){.type = CHAN_READY}, line, 7) == 6);
}

static int nlines;
static char lines[4][CHAN_LINE_MAX];

static void on_line(void *data, const char *line) {
  (void)data;
  if (nlines < 4) snprintf(lines[nlines], sizeof lines[0], "%s", line);
  nlines++;
}

static void test_reader(void) {
  chan_reader_t r = {.len = 0};
  const char *in = "ready\npeer 2 7\nlea";
  chan_reader_feed(&r, in, strlen(in), on_line, NULL);
  CHECK(nlines == 2);
  chan_reader_feed(&r, "der 1 1 1\n\n", 11, on_line, NULL);
  CHECK(nlines == 4);
  CHECK_STR(lines[0], "ready");
  CHECK_STR(lines[1], "peer 2 7");
  CHECK_STR(lines[2], "leader 1 1 1");
  CHECK_STR(lines[3], "");
  char big[2 * CHAN_LINE_MAX];
  memset(big, 'e', sizeof big);
  big[sizeof big - 1] = '\n';
  nlines = 0;
  chan_reader_feed(&r, big, sizeof big, on_line, NULL);
  CHECK(nlines == 1 && strlen(lines[0]) == CHAN_LINE_MAX - 1); /* cut, not split */
}

int main(void) {
  test_parse_each();
  test_parse_malformed();
  test_round_trip();
  test_format_rejects();
  test_reader();
  TEST_DONE();
}
