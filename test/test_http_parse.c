/* test_http_parse.c -- unit tests for server/http_parse.c: llhttp glue and the header store, fed raw
 * bytes in request and response mode (whole, split anywhere, pipelined, chunked, malformed). */
#include "../server/http_parse.h"
#include "test.h"

typedef struct {
  int begins, heads;
  mf_buf_t body;
  int skip_body; /* on_head says "no body" (a response to HEAD) */
} msg_t;

static int on_begin(http_parse_t *p) {
  ((msg_t *)p->data)->begins++;
  return 0;
}

static int on_head(http_parse_t *p) {
  msg_t *m = p->data;
  m->heads++;
  return m->skip_body ? 1 : 0;
}

static int on_body(http_parse_t *p, const char *at, size_t len) {
  return mf_buf_append(&((msg_t *)p->data)->body, at, len);
}

static const http_parse_callbacks_t callbacks = {on_begin, on_head, on_body};

static void start(http_parse_t *p, msg_t *m, llhttp_type_t type) {
  memset(m, 0, sizeof *m);
  http_parse_init(p, type, &callbacks, m, 8192);
}

/* Feeds s in pieces of `step` bytes (0: at once); returns the last result, *used the bytes taken of s. */
static int feed(http_parse_t *p, const char *s, size_t step, size_t *used) {
  size_t len = strlen(s), off = 0;
  int r = HTTP_PARSE_MORE;
  while (off < len) {
    size_t n = step && len - off > step ? step : len - off, took;
    r = http_parse_feed(p, s + off, n, &took);
    off += took;
    if (r != HTTP_PARSE_MORE) break;
  }
  *used = off;
  return r;
}

/* The value of header `name` as a string ("" when missing, to compare). */
static const char *header(const http_parse_t *p, const char *name) {
  static char v[256];
  size_t n;
  const char *at = http_parse_find(p, name, &n);
  snprintf(v, sizeof v, "%.*s", at ? (int)n : 0, at ? at : "");
  return v;
}

static void test_request(size_t step) {
  http_parse_t p;
  msg_t m;
  size_t used, len;
  start(&p, &m, HTTP_REQUEST);
  const char *req = "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nContent-Length: 3\r\n\r\nabc";
  CHECK(feed(&p, req, step, &used) == HTTP_PARSE_DONE && used == strlen(req));
  CHECK(m.begins == 1 && m.heads == 1);
  CHECK_STR(http_parse_method(&p), "POST");
  const char *url = http_parse_url(&p, &len);
  CHECK(len == 6 && memcmp(url, "/a?b=1", 6) == 0);
  CHECK(p.nheaders == 3 && p.keep_alive);
  CHECK_STR(header(&p, "host"), "x");
  CHECK_STR(header(&p, "content-length"), "3");
  CHECK(http_parse_find(&p, "x-empty", &len) != NULL && len == 0);
  CHECK(http_parse_find(&p, "cookie", &len) == NULL);
  CHECK(m.body.len == 3 && memcmp(m.body.data, "abc", 3) == 0);
  /* the packed block: per header two uint32 lengths, the name, the value */
  const char *block = http_parse_headers(&p, &len);
  uint32_t lens[2];
  memcpy(lens, block, sizeof lens);
  CHECK(lens[0] == 4 && lens[1] == 1 && memcmp(block + 8, "Hostx", 5) == 0);
  size_t off = 0, nl, vl;
  const char *name, *value;
  int count = 0;
  while (http_headers_next(block, len, &off, &name, &nl, &value, &vl) == 1) count++;
  CHECK(count == 3 && off == len);
  CHECK(http_headers_next(block, len - 1, &(size_t){0}, &name, &nl, &value, &vl) == 1);
  off = 8 + 5 + 8 + 7 + 8;
  CHECK(http_headers_next(block, len - 1, &off, &name, &nl, &value, &vl) == -1); /* cut short */
  http_parse_next(&p, 4096);
  http_parse_free(&p);
  mf_buf_free(&m.body);
}

static void test_pipelined(void) {
  http_parse_t p;
  msg_t m;
  size_t used, len;
  start(&p, &m, HTTP_REQUEST);
  const char *two = "GET /1 HTTP/1.1\r\nA: 1\r\nHost: h\r\n\r\nGET /2 HTTP/1.0\r\nB: 2\r\n\r\n";
  CHECK(http_parse_feed(&p, two, strlen(two), &used) == HTTP_PARSE_DONE);
  CHECK(used == 34 && p.keep_alive);
  CHECK(memcmp(http_parse_url(&p, &len), "/1", 2) == 0 && len == 2);
  CHECK_STR(header(&p, "a"), "1");
  http_parse_next(&p, 4096);
  CHECK(http_parse_feed(&p, two + used, strlen(two) - used, &used) == HTTP_PARSE_DONE);
  CHECK(memcmp(http_parse_url(&p, &len), "/2", 2) == 0 && len == 2);
  CHECK(p.nheaders == 1 && strcmp(header(&p, "b"), "2") == 0 && strcmp(header(&p, "a"), "") == 0);
  CHECK(!p.keep_alive && p.llhttp.http_minor == 0); /* HTTP/1.0 without keep-alive */
  CHECK(m.begins == 2);
  http_parse_free(&p);
}

static void test_refused(void) {
  http_parse_t p;
  msg_t m;
  size_t used;
  start(&p, &m, HTTP_REQUEST);
  CHECK(feed(&p, "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 0, &used) == HTTP_PARSE_ERROR);
  CHECK(p.err_status == 0 && http_parse_error(&p)[0] != '\0'); /* a 400, with a reason to log */
  http_parse_free(&p);
  start(&p, &m, HTTP_REQUEST);
  p.max_head = 40; /* the URL and headers over the limit: 431 */
  CHECK(feed(&p, "GET /a-long-url-for-a-small-limit HTTP/1.1\r\nHost: example\r\n\r\n", 7, &used) ==
        HTTP_PARSE_ERROR);
  CHECK(p.err_status == 431);
  http_parse_free(&p);
  start(&p, &m, HTTP_REQUEST);
  const char *up = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nNOT-HTTP";
  CHECK(feed(&p, up, 0, &used) == HTTP_PARSE_UPGRADE && strcmp(up + used, "NOT-HTTP") == 0);
  http_parse_free(&p);
}

static void test_response(size_t step) {
  http_parse_t p;
  msg_t m;
  size_t used, len;
  start(&p, &m, HTTP_RESPONSE);
  const char *chunked = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
                        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
  CHECK(feed(&p, chunked, step, &used) == HTTP_PARSE_DONE && used == strlen(chunked));
  CHECK(http_parse_status(&p) == 201 && p.keep_alive);
  const char *reason = http_parse_url(&p, &len);
  CHECK(len == 7 && memcmp(reason, "Created", 7) == 0);
  CHECK_STR(header(&p, "x-a"), "b");
  CHECK(m.body.len == 11 && memcmp(m.body.data, "hello world", 11) == 0);
  http_parse_next(&p, 4096);
  /* a response to HEAD: a length but no body; then one whose body ends with the connection */
  m.skip_body = 1;
  CHECK(feed(&p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", step, &used) == HTTP_PARSE_DONE);
  http_parse_next(&p, 4096);
  m.skip_body = 0;
  m.body.len = 0;
  CHECK(feed(&p, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil EOF", step, &used) == HTTP_PARSE_MORE);
  CHECK(http_parse_finish(&p) == HTTP_PARSE_DONE);
  CHECK(m.body.len == 9 && memcmp(m.body.data, "until EOF", 9) == 0 && !p.keep_alive);
  http_parse_free(&p);
  mf_buf_free(&m.body);
  /* malformed */
  start(&p, &m, HTTP_RESPONSE);
  CHECK(feed(&p, "HTTP/1.1 2x0 OK\r\n\r\n", step, &used) == HTTP_PARSE_ERROR);
  http_parse_free(&p);
  mf_buf_free(&m.body);
  start(&p, &m, HTTP_RESPONSE);
  CHECK(feed(&p, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", step, &used) == HTTP_PARSE_ERROR);
  http_parse_free(&p);
  mf_buf_free(&m.body);
}

/* Hostile requests: each is refused with its status (0: accepted), however the bytes are split. */
static const struct {
  const char *raw;
  int status;
} hostile[] = {
    /* obs-fold: a line that begins with SP or HTAB (CVE-2024-27982), wherever the reads split it */
    {"POST /json HTTP/1.1\r\nHost: example.com\r\n Content-Length: 45\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: x\r\nX:\r\n\tContent-Length: 4\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: x\r\nX: a  \r\n  b\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n \r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: x\r\nX:  a  b  \r\nY:\t\r\nZ:\r\n\r\n", 0},
    /* Transfer-Encoding */
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\nabc", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400},
    {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , Chunked \r\n\r\n0\r\n\r\n", 0},
    /* Host */
    {"GET / HTTP/1.1\r\n\r\n", 400},
    {"GET / HTTP/1.0\r\n\r\n", 0},
    {"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
    {"GET http://a/ HTTP/1.1\r\nHost:\r\n\r\n", 400},
    {"GET / HTTP/1.1\r\nHost:\r\n\r\n", 0},
    {"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 0},
    /* request line */
    {"GET / HTTP/0.9\r\n\r\n", 505},
    {"GET /\r\nHost: a\r\n\r\n", 505}, /* no version at all (found by fuzz_http) */
    {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
    {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
    {"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 501},
    {"NOT A REQUEST LINE\r\n\r\n", 400},
    {"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0},
    {"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405},
    {"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400},
};

static void test_hostile(size_t step) {
  for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
    http_parse_t p;
    msg_t m;
    size_t used;
    start(&p, &m, HTTP_REQUEST);
    int r = feed(&p, hostile[i].raw, step, &used);
    /* the unknown method is told apart only when its line comes in one piece */
    int want = hostile[i].status == 501 && step && hostile[i].raw[0] == 'F' ? 400 : hostile[i].status;
    int got = r == HTTP_PARSE_ERROR ? (p.err_status ? p.err_status : 400) : 0;
    if (got != want) fprintf(stderr, "hostile[%zu] step %zu: got %d, want %d\n", i, step, got, want);
    CHECK(got == want && (want != 0 || r == HTTP_PARSE_DONE));
    http_parse_free(&p);
    mf_buf_free(&m.body);
  }
}

/* Trailing whitespace trimmed; HTTP/1.0 with Transfer-Encoding closes; chunk extensions are limited. */
static void test_hostile_framing(size_t step) {
  http_parse_t p;
  msg_t m;
  size_t used;
  start(&p, &m, HTTP_REQUEST);
  CHECK(feed(&p, "GET / HTTP/1.1\r\nHost: a \t\r\nX:  b c \r\n\r\n", step, &used) == HTTP_PARSE_DONE);
  CHECK_STR(header(&p, "host"), "a");
  CHECK_STR(header(&p, "x"), "b c");
  http_parse_free(&p);
  start(&p, &m, HTTP_REQUEST);
  const char *te10 = "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n";
  CHECK(feed(&p, te10, step, &used) == HTTP_PARSE_DONE && !p.keep_alive && m.body.len == 1);
  http_parse_free(&p);
  mf_buf_free(&m.body);
  /* extensions count toward max_body: 3 body bytes + 3 of name "a" and value "bc" is over 5 */
  start(&p, &m, HTTP_REQUEST);
  p.max_body = 5;
  CHECK(feed(&p, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a=bc\r\nabc\r\n0\r\n\r\n", step,
             &used) == HTTP_PARSE_ERROR && p.err_status == 413);
  http_parse_free(&p);
  mf_buf_free(&m.body);
  /* one chunk's extensions over HTTP_PARSE_MAX_CHUNK_EXT */
  static char big[HTTP_PARSE_MAX_CHUNK_EXT + 200];
  int n = snprintf(big, sizeof big, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a=");
  memset(big + n, 'v', HTTP_PARSE_MAX_CHUNK_EXT);
  start(&p, &m, HTTP_REQUEST);
  CHECK(feed(&p, big, step ? step * 100 : 0, &used) == HTTP_PARSE_ERROR && p.err_status == 400);
  http_parse_free(&p);
  mf_buf_free(&m.body);
  /* a response with a folded line is refused too */
  start(&p, &m, HTTP_RESPONSE);
  CHECK(feed(&p, "HTTP/1.1 200 OK\r\nX: a\r\n Content-Length: 2\r\n\r\nok", step, &used) == HTTP_PARSE_ERROR);
  http_parse_free(&p);
}

int main(void) {
  test_request(0);
  test_request(1); /* one byte per feed: every piece split */
  test_request(7);
  test_pipelined();
  test_refused();
  test_response(0);
  test_response(1);
  test_response(5);
  for (size_t step = 0; step < 9; step++) {
    test_hostile(step);
    test_hostile_framing(step);
  }
  TEST_DONE();
}
