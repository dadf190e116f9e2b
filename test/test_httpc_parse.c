/* test_httpc_parse.c -- unit tests for server/httpc_parse.c: responses as the HTTP client reads them,
 * fed raw bytes whole, split in two at every offset, and a byte at a time (Content-Length, chunked
 * with extensions and trailers, close-delimited, 1xx, 204/304/HEAD, malformed, maxBody). */
#include "../server/httpc_parse.h"
#include "test.h"

typedef struct {
  int result;       /* the last feed's (or finish's) */
  int headed;       /* the head was complete after the feed that returned `result` */
  size_t used_last; /* bytes the last feed took */
  size_t rest;      /* bytes of the input not taken */
  mf_buf_t body;    /* every body byte handed out, in order */
  int feeds_with_body, pieces;
} run_t;

/* Feeds s cut at the offsets in cuts[] (ascending, ending with len), collecting what is handed out;
 * with `eof`, httpc_parse_finish after the last piece when the response is not complete. */
static void run_cuts(httpc_parse_t *c, const char *s, size_t len, const size_t *cuts, size_t ncuts, int eof,
                     run_t *r) {
  size_t off = 0;
  memset(r, 0, sizeof *r);
  r->result = HTTP_PARSE_MORE;
  for (size_t i = 0; i < ncuts && r->result == HTTP_PARSE_MORE; i++) {
    size_t n = cuts[i] - off, used, blen;
    r->result = httpc_parse_feed(c, s + off, n, &used);
    r->used_last = used;
    off += r->result == HTTP_PARSE_ERROR ? n : used;
    const char *b = httpc_parse_body(c, &blen);
    if (blen) {
      mf_buf_append(&r->body, b, blen);
      r->feeds_with_body++;
    }
  }
  if (eof && r->result == HTTP_PARSE_MORE) {
    size_t blen;
    r->result = httpc_parse_finish(c);
    const char *b = httpc_parse_body(c, &blen);
    if (blen) mf_buf_append(&r->body, b, blen);
  }
  r->headed = c->headed;
  r->rest = len - off;
}

typedef struct {
  const char *name;
  const char *raw;
  int no_body, eof, whole;
  uint64_t max_body;
  int result;         /* expected */
  int status;
  const char *body;   /* expected body (NULL: not checked) */
  int keep_alive;
  size_t rest;        /* bytes left after the response */
  const char *header; /* "name=value" that must be found, or NULL */
  const char *trailer;
} resp_case_t;

#define U64_MAX UINT64_MAX
static const resp_case_t cases[] = {
    {"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", 0, 0, 0, U64_MAX,
     HTTP_PARSE_DONE, 200, "hello", 1, 0, "x-a=b", NULL},
    {"content-length, whole", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0, 0, 1, U64_MAX, HTTP_PARSE_DONE,
     200, "hello", 1, 0, NULL, NULL},
    {"chunked, extensions, trailer",
     "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6;q=\"x y\"\r\n world\r\n"
     "0\r\nX-Sum: done\r\n\r\n",
     0, 0, 0, U64_MAX, HTTP_PARSE_DONE, 201, "hello world", 1, 0, NULL, "X-Sum=done"},
    {"chunked, whole", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 0, 0,
     1, U64_MAX, HTTP_PARSE_DONE, 200, "abcde", 1, 0, NULL, NULL},
    {"close-delimited", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", 0, 1, 0, U64_MAX,
     HTTP_PARSE_DONE, 200, "until the end", 0, 0, NULL, NULL},
    {"close-delimited, whole", "HTTP/1.0 200 OK\r\n\r\nall of it", 0, 1, 1, U64_MAX, HTTP_PARSE_DONE, 200, "all of it",
     0, 0, NULL, NULL},
    {"204 has no body", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 0, 0, 0, U64_MAX, HTTP_PARSE_DONE, 204, "", 1, 0,
     NULL, NULL},
    {"304 has no body despite a length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 0, 0, 0, U64_MAX,
     HTTP_PARSE_DONE, 304, "", 1, 0, NULL, NULL},
    {"HEAD has no body despite a length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 1, 0, 0, U64_MAX,
     HTTP_PARSE_DONE, 200, "", 1, 0, NULL, NULL},
    {"bytes after the response are left", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokXX", 0, 0, 0, U64_MAX,
     HTTP_PARSE_DONE, 200, "ok", 1, 2, NULL, NULL},
    {"100 continue is a response of its own", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 0, 0, 0, U64_MAX,
     HTTP_PARSE_DONE, 100, "", 1, 17, NULL, NULL},
    {"repeated headers are all kept", "HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nContent-Length: 0\r\nSet-Cookie: b\r\n\r\n",
     0, 0, 0, U64_MAX, HTTP_PARSE_DONE, 200, "", 1, 0, "set-cookie=a", NULL},
    {"connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", 0, 0, 0, U64_MAX,
     HTTP_PARSE_DONE, 200, "x", 0, 0, NULL, NULL},
    {"cut mid-body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, 1, 0, U64_MAX, HTTP_PARSE_ERROR, 200, NULL,
     0, 0, NULL, NULL},
    {"cut mid-chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 0, 1, 0, U64_MAX,
     HTTP_PARSE_ERROR, 200, NULL, 0, 0, NULL, NULL},
    {"bad content-length", "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello", 0, 0, 0, U64_MAX, HTTP_PARSE_ERROR,
     0, NULL, 0, 0, NULL, NULL},
    {"two content-lengths", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 0, 0, 0, U64_MAX,
     HTTP_PARSE_ERROR, 0, NULL, 0, 0, NULL, NULL},
    {"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, 0, 0, U64_MAX,
     HTTP_PARSE_ERROR, 0, NULL, 0, 0, NULL, NULL},
    {"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", 0, 0, 0, U64_MAX, HTTP_PARSE_ERROR, 0, NULL, 0, 0, NULL, NULL},
    {"folded header", "HTTP/1.1 200 OK\r\nX-A: 1\r\n Content-Length: 5\r\n\r\n", 0, 0, 0, U64_MAX, HTTP_PARSE_ERROR, 0,
     NULL, 0, 0, NULL, NULL},
    {"body over max_body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", 0, 0, 0, 9, HTTP_PARSE_ERROR,
     0, NULL, 0, 0, NULL, NULL},
    {"chunked body over max_body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n0\r\n\r\n", 0,
     0, 1, 5, HTTP_PARSE_ERROR, 0, NULL, 0, 0, NULL, NULL},
    {"body at max_body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", 0, 0, 1, 10, HTTP_PARSE_DONE, 200,
     "0123456789", 1, 0, NULL, NULL},
};

/* Does the packed block hold "name=value" (name compared without case)? */
static int block_has(const char *block, size_t len, const char *want) {
  size_t off = 0, nl, vl;
  const char *n, *v, *eq = strchr(want, '=');
  while (http_headers_next(block, len, &off, &n, &nl, &v, &vl) == 1)
    if (nl == (size_t)(eq - want) && strncasecmp(n, want, nl) == 0 && vl == strlen(eq + 1) &&
        memcmp(v, eq + 1, vl) == 0)
      return 1;
  return 0;
}

static void check_case(const resp_case_t *k, const size_t *cuts, size_t ncuts, const char *how) {
  httpc_parse_t c;
  run_t r;
  size_t len = strlen(k->raw), n;
  httpc_parse_init(&c);
  httpc_parse_start(&c, k->no_body, k->max_body, k->whole);
  run_cuts(&c, k->raw, len, cuts, ncuts, k->eof, &r);
  int ok = r.result == k->result;
  if (ok && k->result != HTTP_PARSE_ERROR) {
    ok = http_parse_status(&c.parse) == k->status && c.parse.keep_alive == (unsigned)k->keep_alive &&
         r.rest == k->rest && r.headed;
    if (k->body) ok = ok && r.body.len == strlen(k->body) && memcmp(r.body.data ? r.body.data : "", k->body, r.body.len) == 0;
    const char *block = http_parse_headers(&c.parse, &n);
    if (k->header) ok = ok && block_has(block, n, k->header);
    block = http_parse_trailers(&c.parse, &n);
    if (k->trailer) ok = ok && block_has(block, n, k->trailer);
    if (k->whole) ok = ok && r.feeds_with_body <= 1; /* a whole body comes once */
  }
  if (!ok) {
    char err[256];
    fprintf(stderr, "case \"%s\" (%s): result %d (want %d), body \"%.*s\", rest %zu: %s\n", k->name, how, r.result,
            k->result, (int)r.body.len, r.body.data ? r.body.data : "", r.rest, httpc_parse_error(&c, err, sizeof err));
    test_failures++;
  }
  mf_buf_free(&r.body);
  httpc_parse_free(&c);
}

static void test_cases(void) {
  for (size_t i = 0; i < MF_ARRAY_SIZE(cases); i++) {
    const resp_case_t *k = &cases[i];
    size_t len = strlen(k->raw);
    char how[64];
    check_case(k, &len, 1, "whole");
    for (size_t cut = 1; cut < len; cut++) { /* split in two at every offset */
      size_t cuts[2] = {cut, len};
      snprintf(how, sizeof how, "cut at %zu", cut);
      check_case(k, cuts, 2, how);
    }
    size_t bytes[512]; /* a byte at a time */
    if (len <= MF_ARRAY_SIZE(bytes)) {
      for (size_t j = 0; j < len; j++) bytes[j] = j + 1;
      check_case(k, bytes, len, "byte by byte");
    }
  }
}

static int feed_str(httpc_parse_t *c, const char *s, size_t *used) {
  return httpc_parse_feed(c, s, strlen(s), used);
}

/* A Content-Length body is handed out where it lies (no copy); chunks of one feed come as one piece. */
static void test_no_copy(void) {
  httpc_parse_t c;
  size_t used, n;
  const char *raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
  httpc_parse_init(&c);
  httpc_parse_start(&c, 0, UINT64_MAX, 0);
  CHECK(httpc_parse_feed(&c, raw, strlen(raw), &used) == HTTP_PARSE_DONE);
  CHECK(httpc_parse_body(&c, &n) == raw + strlen(raw) - 5 && n == 5);
  const char *chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n";
  httpc_parse_start(&c, 0, UINT64_MAX, 0);
  CHECK(httpc_parse_feed(&c, chunked, strlen(chunked), &used) == HTTP_PARSE_MORE);
  const char *b = httpc_parse_body(&c, &n);
  CHECK(n == 5 && memcmp(b, "abcde", 5) == 0);
  CHECK(feed_str(&c, "0\r\n\r\n", &used) == HTTP_PARSE_DONE);
  CHECK(httpc_parse_body(&c, &n) != NULL && n == 0); /* what the last feed handed out is gone */
  httpc_parse_free(&c);
}

/* One parser, many responses: after a refused one, after a complete one, after an interim 100. */
static void test_restart(void) {
  httpc_parse_t c;
  size_t used, n;
  char err[256];
  httpc_parse_init(&c);
  httpc_parse_start(&c, 0, 3, 0);
  CHECK(feed_str(&c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd", &used) == HTTP_PARSE_ERROR);
  CHECK_STR(httpc_parse_error(&c, err, sizeof err), "response body larger than maxBody (3 bytes)");
  httpc_parse_start(&c, 0, UINT64_MAX, 1);
  CHECK(feed_str(&c, "HTTP/1.1 404 Nope\r\nContent-Length: 1\r\n\r\nz", &used) == HTTP_PARSE_DONE);
  const char *reason = http_parse_url(&c.parse, &n);
  CHECK(http_parse_status(&c.parse) == 404 && n == 4 && memcmp(reason, "Nope", 4) == 0);
  httpc_parse_start(&c, 0, UINT64_MAX, 1);
  CHECK(feed_str(&c, "HTTP/1.1 200 OK\r\nX: y\r\n\r\n", &used) == HTTP_PARSE_MORE && c.headed);
  CHECK(httpc_parse_finish(&c) == HTTP_PARSE_DONE);
  const char *b = httpc_parse_body(&c, &n);
  CHECK(n == 0 && b != NULL);
  httpc_parse_start(&c, 0, UINT64_MAX, 0);
  CHECK(feed_str(&c, "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", &used) == HTTP_PARSE_ERROR);
  CHECK(strncmp(httpc_parse_error(&c, err, sizeof err), "malformed response: ", 20) == 0);
  httpc_parse_start(&c, 0, UINT64_MAX, 0);
  CHECK(httpc_parse_finish(&c) == HTTP_PARSE_MORE); /* closed before anything: not a response */
  httpc_parse_free(&c);
}

/* What a parser makes of `s` fed in pieces of the sizes a seeded generator picks (0: whole). */
typedef struct {
  int result;
  size_t taken;
  mf_buf_t body;
} outcome_t;

static uint32_t rand_next(uint32_t *state) {
  *state = *state * 1103515245u + 12345u;
  return *state >> 16;
}

static void outcome_of(const char *s, size_t len, int whole, uint32_t seed, outcome_t *o) {
  httpc_parse_t c;
  size_t off = 0;
  memset(o, 0, sizeof *o);
  o->result = HTTP_PARSE_MORE;
  httpc_parse_init(&c);
  httpc_parse_start(&c, 0, 4096, whole);
  while (off < len && o->result == HTTP_PARSE_MORE) {
    size_t n = seed ? 1 + rand_next(&seed) % 7 : len - off, used, blen;
    if (n > len - off) n = len - off;
    o->result = httpc_parse_feed(&c, s + off, n, &used);
    off += used;
    const char *b = httpc_parse_body(&c, &blen);
    mf_buf_append(&o->body, b, blen);
  }
  if (o->result == HTTP_PARSE_MORE) {
    size_t blen;
    o->result = httpc_parse_finish(&c);
    const char *b = httpc_parse_body(&c, &blen);
    mf_buf_append(&o->body, b, blen);
  }
  o->taken = o->result == HTTP_PARSE_ERROR ? 0 : off;
  httpc_parse_free(&c);
}

/* Responses with bytes changed at random: however they are cut, the parser says the same thing
 * (result, bytes taken, body), and never reads outside what it was given (ASan runs this too). */
static void test_mutations(void) {
  static const char *seeds[] = {
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX: y\r\n\r\n0123456789",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
      "HTTP/1.0 200 OK\r\n\r\nuntil close",
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
  };
  uint32_t rng = 42;
  char buf[256];
  for (int round = 0; round < 3000; round++) {
    const char *seed = seeds[round % MF_ARRAY_SIZE(seeds)];
    size_t len = strlen(seed);
    memcpy(buf, seed, len);
    for (int k = 1 + (int)(rand_next(&rng) % 3); k > 0; k--) buf[rand_next(&rng) % len] = (char)rand_next(&rng);
    for (int whole = 0; whole <= 1; whole++) {
      outcome_t a, b;
      outcome_of(buf, len, whole, 0, &a);
      outcome_of(buf, len, whole, 1 + rand_next(&rng), &b);
      int same = a.result == b.result && a.taken == b.taken && a.body.len == b.body.len &&
                 (a.body.len == 0 || memcmp(a.body.data, b.body.data, a.body.len) == 0);
      if (!same) {
        fprintf(stderr, "mutation %d (whole %d): %d/%zu/%zu bytes at once, %d/%zu/%zu in pieces: \"%.*s\"\n", round,
                whole, a.result, a.taken, a.body.len, b.result, b.taken, b.body.len, (int)len, buf);
        test_failures++;
      }
      mf_buf_free(&a.body);
      mf_buf_free(&b.body);
    }
  }
}

int main(void) {
  test_cases();
  test_mutations();
  test_no_copy();
  test_restart();
  TEST_DONE();
}
