/* test_util.c -- unit tests for server/util.c: buffers, value parsers, HTTP dates and reasons. */
#include "../server/util.h"
#include "test.h"

static void test_buf(void) {
  mf_buf_t b;
  mf_buf_init(&b);
  CHECK(mf_buf_append(&b, "hello", 5) == 0);
  CHECK(mf_buf_appendf(&b, " %d", 42) == 0);
  CHECK(b.len == 8 && memcmp(b.data, "hello 42", 8) == 0);
  mf_buf_consume(&b, 6);
  CHECK(b.len == 2 && memcmp(b.data, "42", 2) == 0);
  /* appendf longer than its stack buffer */
  char big[1000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  CHECK(mf_buf_appendf(&b, "%s", big) == 0);
  CHECK(b.len == 2 + 999 && b.data[b.len - 1] == 'x');
  mf_buf_reset(&b, 64); /* grew past 64: memory given back */
  CHECK(b.len == 0 && b.data == NULL && b.cap == 0);
  mf_buf_append(&b, "ab", 2);
  mf_buf_reset(&b, 4096); /* small: kept for reuse */
  CHECK(b.len == 0 && b.data != NULL);
  mf_buf_free(&b);
}

static void test_parsers(void) {
  long l;
  uint64_t u;
  CHECK(mf_parse_int("8080", 0, 65535, &l) == 0 && l == 8080);
  CHECK(mf_parse_int("70000", 0, 65535, &l) == -1);
  CHECK(mf_parse_int("abc", 0, 10, &l) == -1);
  CHECK(mf_parse_int("12abc", 0, 100, &l) == -1);
  CHECK(mf_parse_int("", 0, 10, &l) == -1);
  CHECK(mf_parse_int("-1", 0, 10, &l) == -1);
  CHECK(mf_parse_seconds("10", &u) == 0 && u == 10000);
  CHECK(mf_parse_seconds("0.5", &u) == 0 && u == 500);
  CHECK(mf_parse_seconds("-1", &u) == -1);
  CHECK(mf_parse_seconds("1s", &u) == -1);
  CHECK(mf_parse_seconds("nan", &u) == -1);
  CHECK(mf_parse_size("1024", &u) == 0 && u == 1024);
  CHECK(mf_parse_size("64k", &u) == 0 && u == 65536);
  CHECK(mf_parse_size("1M", &u) == 0 && u == 1048576);
  CHECK(mf_parse_size("1x", &u) == -1);
  CHECK(mf_parse_size("-5", &u) == -1);
  CHECK(mf_parse_size("99999999999999g", &u) == -1);
}

static void test_http(void) {
  char d[32];
  mf_http_date(784111777, d); /* RFC 9110's example */
  CHECK_STR(d, "Sun, 06 Nov 1994 08:49:37 GMT");
  CHECK_STR(mf_http_reason(200), "OK");
  CHECK_STR(mf_http_reason(431), "Request Header Fields Too Large");
  CHECK_STR(mf_http_reason(799), "Unknown");
}

int main(void) {
  test_buf();
  test_parsers();
  test_http();
  TEST_DONE();
}
