/* test_http_pass_upgrade.c -- unit tests for the upgrade rules of server/http_pass_head.c: when a
 * client asks to switch protocols, the Upgrade value and "Connection: upgrade" the upstream gets, and
 * the header lines of the 101 passed back (Upgrade kept, the other hop-by-hop headers dropped). */
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

/* The Upgrade value, as a string ("" when the request does not ask for an upgrade). */
static const char *upgrade_of(const char *const *kv) {
  static char out[64];
  mf_buf_t h;
  size_t n = 0;
  mf_buf_init(&h);
  pack(&h, kv);
  const char *v = http_pass_upgrade_of(h.data, h.len, &n);
  snprintf(out, sizeof out, "%.*s", v ? (int)n : 0, v ? v : "");
  mf_buf_free(&h);
  return out;
}

static void upgrade_needs_both_headers(void) {
  static const char *const ws[] = {"Connection", "keep-alive, Upgrade", "Upgrade", "websocket", NULL};
  static const char *const two[] = {"Connection", "keep-alive", "connection", "UPGRADE", "upgrade", "h2c", NULL};
  static const char *const no_conn[] = {"Upgrade", "websocket", NULL};
  static const char *const no_upgrade[] = {"Connection", "upgrade", NULL};
  static const char *const empty[] = {"Connection", "upgrade", "Upgrade", "", NULL};
  static const char *const other[] = {"Connection", "upgrades", "Upgrade", "websocket", NULL};
  CHECK_STR(upgrade_of(ws), "websocket");
  CHECK_STR(upgrade_of(two), "h2c");
  CHECK_STR(upgrade_of(no_conn), "");
  CHECK_STR(upgrade_of(no_upgrade), "");
  CHECK_STR(upgrade_of(empty), "");
  CHECK_STR(upgrade_of(other), "");
}

static void request_asks_the_upstream_with_connection_upgrade(void) {
  static const char *const kv[] = {"Host", "example.test", "Connection", "keep-alive, Upgrade, X-Hop", "X-Hop", "1",
                                   "Upgrade", "websocket", "Sec-WebSocket-Key", "k", NULL};
  mf_buf_t h, out;
  mf_buf_init(&h);
  mf_buf_init(&out);
  pack(&h, kv);
  http_pass_req_t r = {.method = "GET", .target = "/ws", .target_len = 3, .headers = h.data, .headers_len = h.len,
                       .upgrade = "websocket", .upgrade_len = 9};
  CHECK(http_pass_request_head(&out, &r) == 0);
  CHECK_STR(str(&out), "GET /ws HTTP/1.1\r\nHost: example.test\r\nSec-WebSocket-Key: k\r\n"
                       "Upgrade: websocket\r\nConnection: upgrade\r\n\r\n");
  mf_buf_free(&h);
  mf_buf_free(&out);
}

static void switching_head_keeps_upgrade_and_says_connection_upgrade(void) {
  static const char *const kv[] = {"Upgrade", "websocket", "Connection", "Upgrade, X-Hop", "X-Hop", "1",
                                   "Keep-Alive", "timeout=5", "Date", "x", "Content-Length", "0",
                                   "Transfer-Encoding", "chunked", "Sec-WebSocket-Accept", "a", NULL};
  mf_buf_t h, out;
  mf_buf_init(&h);
  mf_buf_init(&out);
  pack(&h, kv);
  CHECK(http_pass_upgrade_head(&out, h.data, h.len) == 0);
  CHECK_STR(str(&out), "Upgrade: websocket\r\nSec-WebSocket-Accept: a\r\nConnection: upgrade\r\n");
  mf_buf_free(&h);
  mf_buf_free(&out);
}

int main(void) {
  upgrade_needs_both_headers();
  request_asks_the_upstream_with_connection_upgrade();
  switching_head_keeps_upgrade_and_says_connection_upgrade();
  TEST_DONE();
}
