/* test_http_trailers.c -- server/http_parse.c keeps a chunked message's trailer fields apart from its
 * headers (RFC 9110 §6.5.1): a trailer can never add or change a header. Fed whole and byte by byte. */
#include "../server/http_parse.h"
#include "test.h"

static int on_head(http_parse_t *p) {
  (void)p;
  return 0;
}

static const http_parse_callbacks_t callbacks = {NULL, on_head, NULL};

/* Is `name: value` in the packed block? */
static int has(const char *block, size_t len, const char *name, const char *value) {
  size_t off = 0, nl, vl;
  const char *n, *v;
  while (http_headers_next(block, len, &off, &n, &nl, &v, &vl) == 1)
    if (nl == strlen(name) && memcmp(n, name, nl) == 0 && vl == strlen(value) && memcmp(v, value, vl) == 0)
      return 1;
  return 0;
}

static void test_trailers(size_t step) {
  http_parse_t p;
  size_t used = 0, len, tlen;
  const char *req = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n0\r\nAuthorization: forged\r\nHost: evil\r\n\r\n";
  http_parse_init(&p, HTTP_REQUEST, &callbacks, NULL, 8192);
  int r = HTTP_PARSE_MORE;
  while (used < strlen(req) && r == HTTP_PARSE_MORE) {
    size_t n = step && strlen(req) - used > step ? step : strlen(req) - used, took;
    r = http_parse_feed(&p, req + used, n, &took);
    used += took;
  }
  CHECK(r == HTTP_PARSE_DONE && used == strlen(req));
  const char *headers = http_parse_headers(&p, &len), *trailers = http_parse_trailers(&p, &tlen);
  CHECK(has(headers, len, "Host", "x") && has(headers, len, "Transfer-Encoding", "chunked"));
  CHECK(!has(headers, len, "Authorization", "forged") && !has(headers, len, "Host", "evil"));
  CHECK(has(trailers, tlen, "Authorization", "forged") && has(trailers, tlen, "Host", "evil"));
  size_t vlen;
  const char *host = http_parse_find(&p, "host", &vlen);
  CHECK(host != NULL && vlen == 1 && host[0] == 'x');
  CHECK(http_parse_find(&p, "authorization", &vlen) == NULL);
  http_parse_next(&p, 4096);
  /* the next message has no trailers */
  const char *get = "GET / HTTP/1.1\r\nHost: y\r\n\r\n";
  CHECK(http_parse_feed(&p, get, strlen(get), &used) == HTTP_PARSE_DONE);
  http_parse_trailers(&p, &tlen);
  headers = http_parse_headers(&p, &len);
  CHECK(tlen == 0 && has(headers, len, "Host", "y"));
  http_parse_free(&p);
}

int main(void) {
  test_trailers(0);
  test_trailers(1);
  TEST_DONE();
}
