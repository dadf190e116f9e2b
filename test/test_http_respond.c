/* test_http_respond.c -- unit tests for the response-head builder in server/http_respond.c. */
#include "../server/http_internal.h"
#include "test.h"

#define DATE "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"

static char head_text[1024];

/* Builds a head for h (date and lines filled in) and returns it as a string; *flags gets the framing. */
static const char *build(http_head_t h, unsigned *flags) {
  mf_buf_t out;
  mf_buf_init(&out);
  h.date = DATE;
  h.date_len = strlen(DATE);
  if (h.lines == NULL) h.lines = "";
  h.lines_len = strlen(h.lines);
  *flags = http_respond_head(&out, &h);
  snprintf(head_text, sizeof head_text, "%.*s", (int)out.len, out.data);
  mf_buf_free(&out);
  return head_text;
}

static void test_length(void) {
  unsigned f;
  http_head_t h = {.status = 200, .http11 = 1, .keep_alive = 1, .final = 1, .clen = -1, .body_len = 5,
                   .lines = "Content-Type: text/plain\r\n"};
  CHECK_STR(build(h, &f), "HTTP/1.1 200 OK\r\n" DATE "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\n");
  CHECK(f == HTTP_HEAD_KEEP_ALIVE);
  /* the handler's own Content-Length: none added */
  h.clen = 12;
  h.lines = "Content-Length: 12\r\n";
  CHECK_STR(build(h, &f), "HTTP/1.1 200 OK\r\n" DATE "Content-Length: 12\r\n\r\n");
  /* no body for 204 and 304: no length either */
  http_head_t nc = {.status = 204, .http11 = 1, .keep_alive = 1, .final = 1, .clen = -1};
  CHECK_STR(build(nc, &f), "HTTP/1.1 204 No Content\r\n" DATE "\r\n");
  CHECK(f == HTTP_HEAD_KEEP_ALIVE);
}

static void test_streams(void) {
  unsigned f;
  /* a stream on HTTP/1.1: chunked */
  http_head_t h = {.status = 200, .http11 = 1, .keep_alive = 1, .final = 0, .clen = -1};
  CHECK_STR(build(h, &f), "HTTP/1.1 200 OK\r\n" DATE "Transfer-Encoding: chunked\r\n\r\n");
  CHECK(f == (HTTP_HEAD_CHUNKED | HTTP_HEAD_KEEP_ALIVE));
  /* on HTTP/1.0: the body ends with the connection */
  h.http11 = 0;
  CHECK_STR(build(h, &f), "HTTP/1.1 200 OK\r\n" DATE "Connection: close\r\n\r\n");
  CHECK(f == 0);
  mf_buf_t out;
  mf_buf_init(&out);
  http_respond_chunk_size(&out, 0x1a2b);
  CHECK(out.len == 6 && memcmp(out.data, "1a2b\r\n", 6) == 0);
  mf_buf_free(&out);
}

static void test_connection(void) {
  unsigned f;
  /* HTTP/1.0 with keep-alive says so */
  http_head_t h = {.status = 404, .http11 = 0, .keep_alive = 1, .final = 1, .clen = -1, .body_len = 0};
  CHECK_STR(build(h, &f), "HTTP/1.1 404 Not Found\r\n" DATE "Content-Length: 0\r\nConnection: keep-alive\r\n\r\n");
  CHECK(f == HTTP_HEAD_KEEP_ALIVE);
  /* asked to close (by the client, the handler or a drain) */
  h.http11 = 1;
  h.keep_alive = 0;
  CHECK_STR(build(h, &f), "HTTP/1.1 404 Not Found\r\n" DATE "Content-Length: 0\r\nConnection: close\r\n\r\n");
  CHECK(f == 0);
  /* a status without a known reason */
  http_head_t odd = {.status = 599, .http11 = 1, .keep_alive = 1, .final = 1, .clen = -1, .body_len = 0};
  CHECK(strncmp(build(odd, &f), "HTTP/1.1 599 ", 13) == 0);
}

static void test_roles(void) {
  CHECK(http_respond_header_role("Transfer-Encoding", 17) == HTTP_HEADER_FRAMING);
  CHECK(http_respond_header_role("CONNECTION", 10) == HTTP_HEADER_CONNECTION);
  CHECK(http_respond_header_role("content-length", 14) == HTTP_HEADER_LENGTH);
  CHECK(http_respond_header_role("Content-Type", 12) == HTTP_HEADER_OWN);
  CHECK(http_respond_header_role("Connectionx", 11) == HTTP_HEADER_OWN);
  CHECK(http_respond_header_role("content-lengtx", 14) == HTTP_HEADER_OWN);
  CHECK(http_respond_header_role("Date", 4) == HTTP_HEADER_OWN); /* ours and the handler's both go */
}

int main(void) {
  test_roles();
  test_length();
  test_streams();
  test_connection();
  TEST_DONE();
}
