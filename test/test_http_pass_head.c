/* test_http_pass_head.c -- unit tests for server/http_pass_head.c: the request head rebuilt for an
 * upstream (hop-by-hop headers and those Connection names removed, X-Forwarded-For appended, framing
 * set) and the response head filtered for the client. */
#include <stdint.h>

#include "../server/http_pass.h"
#include "test.h"

/* Packs "name", "value", ... (NULL-terminated) as http_parse.h stores headers. */
static void pack(mf_buf_t *b, const char *const *kv) {
  for (; *kv; kv += 2) {
    uint32_t nl = (uint32_t)strlen(kv[0]), vl = (uint32_t)strlen(kv[1]);
    mf_buf_append(b, &nl, 4);
    mf_buf_append(b, &vl, 4);
    mf_buf_append(b, kv[0], nl);
    mf_buf_append(b, kv[1], vl);
  }
}

static const char *str(mf_buf_t *b) {
  mf_buf_append(b, "", 1);
  b->len--;
  return b->data;
}

static void request_drops_hop_by_hop_and_appends_xff(void) {
  static const char *const kv[] = {"Host", "example.test", "Connection", "keep-alive, X-Secret",
                                   "X-Secret", "s", "Keep-Alive", "timeout=5", "TE", "trailers",
                                   "Transfer-Encoding", "chunked", "Upgrade", "h2c", "Expect", "100-continue",
                                   "X-Forwarded-For", "10.0.0.1", "Accept", "*/*", "x-forwarded-for", "10.0.0.2",
                                   "Content-Length", "5", "Proxy-Authorization", "x", NULL};
  mf_buf_t h, out;
  mf_buf_init(&h);
  mf_buf_init(&out);
  pack(&h, kv);
  http_pass_req_t r = {.method = "POST", .target = "/a?b=1", .target_len = 6, .headers = h.data,
                       .headers_len = h.len, .remote = "127.0.0.1", .host = "up:1",
                       .body = HTTP_PASS_BODY_CHUNKED};
  CHECK(http_pass_request_head(&out, &r) == 0);
  CHECK_STR(str(&out), "POST /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n"
                       "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  mf_buf_free(&h);
  mf_buf_free(&out);
}

static void request_adds_host_length_extra_and_drops_named(void) {
  static const char *const kv[] = {"Accept", "*/*", "Cookie", "c=1", NULL};
  mf_buf_t h, out;
  mf_buf_init(&h);
  mf_buf_init(&out);
  pack(&h, kv);
  http_pass_req_t r = {.method = "GET", .target = "/", .target_len = 1, .headers = h.data, .headers_len = h.len,
                       .host = "up:1", .extra = "X-A: 1\r\n", .extra_len = 8, .drop = "cookie,",
                       .body = HTTP_PASS_BODY_LENGTH, .body_len = 12};
  CHECK(http_pass_request_head(&out, &r) == 0);
  CHECK_STR(str(&out), "GET / HTTP/1.1\r\nAccept: */*\r\nHost: up:1\r\nX-A: 1\r\nContent-Length: 12\r\n\r\n");
  mf_buf_free(&h);
  mf_buf_free(&out);
}

static void response_drops_hop_by_hop_and_date_and_reads_length(void) {
  static const char *const kv[] = {"Date", "x", "Content-Type", "text/plain", "Connection", "close, X-Hop",
                                   "X-Hop", "1", "Keep-Alive", "timeout=4", "Content-Length", "42",
                                   "Set-Cookie", "a", "Set-Cookie", "b", NULL};
  mf_buf_t h, out;
  int64_t clen;
  mf_buf_init(&h);
  mf_buf_init(&out);
  pack(&h, kv);
  CHECK(http_pass_response_head(&out, h.data, h.len, &clen) == 0);
  CHECK(clen == 42);
  CHECK_STR(str(&out), "Content-Type: text/plain\r\nContent-Length: 42\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n");
  mf_buf_free(&h);
  mf_buf_free(&out);
}

static void response_chunked_has_no_length(void) {
  static const char *const kv[] = {"Transfer-Encoding", "chunked", "Content-Length", "3", "X", "y", NULL};
  mf_buf_t h, out;
  int64_t clen;
  mf_buf_init(&h);
  mf_buf_init(&out);
  pack(&h, kv);
  CHECK(http_pass_response_head(&out, h.data, h.len, &clen) == 0);
  CHECK(clen == -1);
  CHECK_STR(str(&out), "X: y\r\n");
  mf_buf_free(&h);
  mf_buf_free(&out);
}

int main(void) {
  request_drops_hop_by_hop_and_appends_xff();
  request_adds_host_length_extra_and_drops_named();
  response_drops_hop_by_hop_and_date_and_reads_length();
  response_chunked_has_no_length();
  TEST_DONE();
}
