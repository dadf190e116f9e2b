/* test_ws_frame.c -- the WebSocket codec (server/ws_frame.c), the handshake's arithmetic
 * (ws_handshake.c: SHA-1 against RFC 3174's vectors, base64, the accept key of RFC 6455 §1.3) and
 * permessage-deflate (ws_deflate.c: negotiation, a round trip, the bound on inflated size). */
#include <stdlib.h>
#include <zlib.h>

#include "../server/ws_deflate.h"
#include "../server/ws_frame.h"
#include "../server/ws_handshake.h"
#include "test.h"

/* A masked client frame into out: returns its length. */
static size_t client_frame(uint8_t *out, int fin, int rsv, int op, const uint8_t *payload, uint64_t n) {
  static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
  size_t h = ws_frame_head(out, fin, 0, op, n);
  out[0] |= (uint8_t)(rsv << 4);
  out[1] |= 0x80;
  memcpy(out + h, key, 4);
  for (uint64_t i = 0; i < n; i++) out[h + 4 + i] = payload[i] ^ key[i & 3];
  return h + 4 + (size_t)n;
}

/* Each length form parses back, and every split before the end of the header says "more". */
static void test_lengths(void) {
  static const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
  static uint8_t buf[70100], payload[70000];
  for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)i;
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    size_t total = client_frame(buf, 1, 0, WS_OP_BINARY, payload, lens[k]);
    size_t expect_head = lens[k] < 126 ? 6 : lens[k] <= 65535 ? 8 : 14;
    ws_frame_t f;
    for (size_t cut = 0; cut < expect_head; cut++) CHECK(ws_frame_parse(buf, cut, WS_PARSE_CLIENT, &f) == 0);
    CHECK(ws_frame_parse(buf, total, WS_PARSE_CLIENT, &f) == (int)expect_head);
    CHECK(f.len == lens[k] && f.fin && f.opcode == WS_OP_BINARY && f.masked && !f.rsv1);
    ws_frame_unmask(buf + expect_head, (size_t)f.len, f.mask, 0);
    CHECK(memcmp(buf + expect_head, payload, (size_t)f.len) == 0);
    /* the server's own head: the shortest form, unmasked */
    uint8_t head[10];
    CHECK(ws_frame_head(head, 1, 0, WS_OP_TEXT, lens[k]) == expect_head - 4);
    CHECK(ws_frame_parse(head, expect_head - 4, 0, &f) == (int)(expect_head - 4) && f.len == lens[k] && !f.masked);
  }
}

/* Unmasking in pieces at any offset gives what unmasking at once gives. */
static void test_unmask_split(void) {
  uint8_t key[4] = {1, 2, 3, 4}, a[37], b[37];
  for (int i = 0; i < 37; i++) a[i] = b[i] = (uint8_t)(i * 7);
  ws_frame_unmask(a, 37, key, 0);
  for (size_t cut = 0; cut <= 37; cut++) {
    uint8_t c[37];
    memcpy(c, b, 37);
    ws_frame_unmask(c, cut, key, 0);
    ws_frame_unmask(c + cut, 37 - cut, key, cut);
    CHECK(memcmp(a, c, 37) == 0);
  }
}

static void test_bad_frames(void) {
  uint8_t buf[300], big[200] = {0};
  ws_frame_t f;
  size_t n = client_frame(buf, 1, 0, WS_OP_TEXT, (const uint8_t *)"hi", 2);
  CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) > 0);
  buf[1] &= 0x7f; /* unmasked, from a client */
  CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) == -WS_CLOSE_PROTOCOL);
  for (int rsv = 1; rsv < 8; rsv++) { /* reserved bits: only RSV1, only with deflate */
    n = client_frame(buf, 1, rsv, WS_OP_TEXT, (const uint8_t *)"hi", 2);
    CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) == -WS_CLOSE_PROTOCOL);
    CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT | WS_PARSE_ALLOW_RSV1, &f) == (rsv == 4 ? 6 : -WS_CLOSE_PROTOCOL));
  }
  n = client_frame(buf, 1, 4, WS_OP_PING, (const uint8_t *)"", 0); /* RSV1 on a control frame */
  CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT | WS_PARSE_ALLOW_RSV1, &f) == -WS_CLOSE_PROTOCOL);
  for (int op = 0; op < 16; op++) { /* 3-7 and 11-15 are reserved */
    n = client_frame(buf, 1, 0, op, (const uint8_t *)"", 0);
    int ok = op <= 2 || (op >= 8 && op <= 10);
    CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) == (ok ? 6 : -WS_CLOSE_PROTOCOL));
  }
  n = client_frame(buf, 1, 0, WS_OP_PING, big, 126); /* control frames: at most 125 bytes */
  CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) == -WS_CLOSE_PROTOCOL);
  n = client_frame(buf, 1, 0, WS_OP_PING, big, 125);
  CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) == 6);
  n = client_frame(buf, 0, 0, WS_OP_CLOSE, big, 2); /* ... and never fragmented */
  CHECK(ws_frame_parse(buf, n, WS_PARSE_CLIENT, &f) == -WS_CLOSE_PROTOCOL);
  uint8_t huge[14] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}; /* 64-bit length, top bit set */
  CHECK(ws_frame_parse(huge, sizeof huge, WS_PARSE_CLIENT, &f) == -WS_CLOSE_PROTOCOL);
}

static int utf8_ok(const char *s, size_t n) {
  ws_utf8_t u = {0, 0, 0};
  return ws_utf8_feed(&u, (const uint8_t *)s, n) == 0 && ws_utf8_complete(&u);
}

/* Valid text split at every byte is valid; invalid text is invalid however it is split. */
static int utf8_split_ok(const char *s, size_t n) {
  int whole = utf8_ok(s, n);
  for (size_t cut = 0; cut <= n; cut++) {
    ws_utf8_t u = {0, 0, 0};
    int ok = ws_utf8_feed(&u, (const uint8_t *)s, cut) == 0 && ws_utf8_feed(&u, (const uint8_t *)s + cut, n - cut) == 0 &&
             ws_utf8_complete(&u);
    CHECK(ok == whole);
  }
  return whole;
}

static void test_utf8(void) {
  static const char good[] = "κόσμε \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf \xef\xbf\xbf";
  CHECK(utf8_split_ok(good, sizeof good - 1));
  CHECK(utf8_split_ok("", 0));
  static const char *const bad[] = {
      "\xc0\xaf",             /* overlong '/' */
      "\xe0\x80\xaf",         /* overlong, 3 bytes */
      "\xf0\x80\x80\xaf",     /* overlong, 4 bytes */
      "\xc1\xbf",             /* overlong 2-byte lead */
      "\xed\xa0\x80",         /* U+D800, a surrogate */
      "\xed\xbf\xbf",         /* U+DFFF */
      "\xf4\x90\x80\x80",     /* past U+10FFFF */
      "\xf5\x80\x80\x80",     /* lead past F4 */
      "\x80",                 /* a stray continuation */
      "\xe2\x82",             /* cut short at the end */
      "a\xe2\x82" "b",        /* cut short inside */
      "\xfe", "\xff",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK(!utf8_split_ok(bad[i], strlen(bad[i])));
}

static void test_close_payloads(void) {
  unsigned code;
  CHECK(ws_close_parse((const uint8_t *)"", 0, &code) == 0 && code == WS_CLOSE_NO_STATUS);
  CHECK(ws_close_parse((const uint8_t *)"\x03", 1, &code) == -WS_CLOSE_PROTOCOL); /* one byte */
  CHECK(ws_close_parse((const uint8_t *)"\x03\xe8" "bye", 5, &code) == 0 && code == 1000);
  CHECK(ws_close_parse((const uint8_t *)"\x03\xe8\xc0\xaf", 4, &code) == -WS_CLOSE_BAD_DATA); /* bad reason */
  static const unsigned good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
  static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    uint8_t p[2] = {(uint8_t)(good[i] >> 8), (uint8_t)good[i]};
    CHECK(ws_close_parse(p, 2, &code) == 0 && code == good[i]);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t p[2] = {(uint8_t)(bad[i] >> 8), (uint8_t)bad[i]};
    CHECK(ws_close_parse(p, 2, &code) == -WS_CLOSE_PROTOCOL);
  }
}

static void hex(const uint8_t *d, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02X", d[i]);
}

/* RFC 3174 §7.3's test vectors, a 64-byte boundary case, and RFC 6455 §1.3's accept key. */
static void test_handshake(void) {
  uint8_t d[20];
  char h[41];
  ws_sha1("abc", 3, d);
  hex(d, 20, h);
  CHECK_STR(h, "A9993E364706816ABA3E25717850C26C9CD0D89D");
  static const char two[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  ws_sha1(two, strlen(two), d);
  hex(d, 20, h);
  CHECK_STR(h, "84983E441C3BD26EBAAE4AA1F95129E5E54670F1");
  char *million = malloc(1000000);
  memset(million, 'a', 1000000);
  ws_sha1(million, 1000000, d);
  free(million);
  hex(d, 20, h);
  CHECK_STR(h, "34AA973CD4C4DAA4F61EEB2BDBAD27316534016F");
  static const char four[] = "0123456701234567012345670123456701234567012345670123456701234567";
  char rep[641];
  for (int i = 0; i < 10; i++) memcpy(rep + 64 * i, four, 64);
  ws_sha1(rep, 640, d);
  hex(d, 20, h);
  CHECK_STR(h, "DEA356A2CDDD90C7A7ECEDC5EBB563934F460452");
  char b[16];
  ws_base64((const uint8_t *)"f", 1, b);
  CHECK_STR(b, "Zg==");
  ws_base64((const uint8_t *)"foob", 4, b);
  CHECK_STR(b, "Zm9vYg==");
  char accept[29];
  ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, accept);
  CHECK_STR(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  CHECK(ws_key_ok("dGhlIHNhbXBsZSBub25jZQ==", 24));
  CHECK(!ws_key_ok("dGhlIHNhbXBsZSBub25jZQ=", 23));
  CHECK(!ws_key_ok("dGhlIHNhbXBsZSBub25jZ!==", 24));
}

static int negotiate(const char *offer, char *out) {
  ws_deflate_params_t p;
  return ws_deflate_negotiate(offer, strlen(offer), &p, out, 160);
}

static void test_negotiation(void) {
  char out[160];
  CHECK(negotiate("permessage-deflate", out) && strcmp(out, "permessage-deflate") == 0);
  CHECK(negotiate("permessage-deflate; client_max_window_bits", out) && strcmp(out, "permessage-deflate") == 0);
  CHECK(negotiate("permessage-deflate; server_no_context_takeover; client_no_context_takeover", out));
  CHECK_STR(out, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  CHECK(negotiate("permessage-deflate; server_max_window_bits=10", out));
  CHECK_STR(out, "permessage-deflate; server_max_window_bits=10");
  CHECK(negotiate("permessage-deflate; server_max_window_bits=\"12\"", out));
  CHECK_STR(out, "permessage-deflate; server_max_window_bits=12");
  CHECK(!negotiate("permessage-deflate; server_max_window_bits=8", out)); /* zlib's raw deflate has no 8 */
  CHECK(!negotiate("permessage-deflate; server_max_window_bits=16", out));
  CHECK(!negotiate("permessage-deflate; server_max_window_bits", out)); /* needs a value */
  CHECK(!negotiate("permessage-deflate; server_no_context_takeover; server_no_context_takeover", out));
  CHECK(!negotiate("permessage-deflate; foo", out));
  CHECK(!negotiate("x-webkit-deflate-frame", out));
  /* the first acceptable offer wins */
  CHECK(negotiate("permessage-deflate; foo, permessage-deflate; client_no_context_takeover", out));
  CHECK_STR(out, "permessage-deflate; client_no_context_takeover");
  CHECK(negotiate("foo, permessage-deflate", out) && strcmp(out, "permessage-deflate") == 0);
}

/* A message deflated by us inflates back, whole or fed in fragments; context carries over. */
static void test_round_trip(void) {
  ws_deflate_params_t p = {0, 0, 15};
  ws_deflate_t *tx = ws_deflate_new(&p), *rx = ws_deflate_new(&p);
  mf_buf_t z, out;
  mf_buf_init(&z);
  mf_buf_init(&out);
  static const char msg[] = "hello hello hello hello hello hello, WebSocket";
  for (int round = 0; round < 3; round++) {
    CHECK(ws_deflate_message(tx, (const uint8_t *)msg, sizeof msg - 1, &z) == 0);
    CHECK(z.len > 0 && z.len < sizeof msg);
    size_t cut = z.len / 2;
    out.len = 0;
    CHECK(ws_inflate(rx, (const uint8_t *)z.data, cut, 0, &out, 1000) == 0);
    CHECK(ws_inflate(rx, (const uint8_t *)z.data + cut, z.len - cut, 1, &out, 1000) == 0);
    CHECK(out.len == sizeof msg - 1 && memcmp(out.data, msg, out.len) == 0);
  }
  out.len = 0;
  CHECK(ws_inflate(rx, (const uint8_t *)"\xff\xff\xff\xff", 4, 1, &out, 1000) == -WS_CLOSE_BAD_DATA);
  mf_buf_free(&z);
  mf_buf_free(&out);
  ws_deflate_free(tx);
  ws_deflate_free(rx);
}

/* 10 MB of zeros deflate to about 10 KB; inflating them stops at the bound with 1009. */
static void test_bomb(void) {
  size_t n = 10 * 1024 * 1024;
  uint8_t *zeros = calloc(1, n);
  ws_deflate_params_t p = {0, 0, 15};
  ws_deflate_t *tx = ws_deflate_new(&p), *rx = ws_deflate_new(&p);
  mf_buf_t z, out;
  mf_buf_init(&z);
  mf_buf_init(&out);
  CHECK(ws_deflate_message(tx, zeros, n, &z) == 0);
  if (z.len >= 60000) fprintf(stderr, "deflated to %zu\n", z.len);
  CHECK(z.len < 60000);
  CHECK(ws_inflate(rx, (const uint8_t *)z.data, z.len, 1, &out, 65536) == -WS_CLOSE_TOO_BIG);
  CHECK(out.len <= 65536 + 1);
  CHECK(out.cap < 200000); /* never grew toward the 10 MB */
  out.len = 0;
  CHECK(ws_inflate(rx, (const uint8_t *)z.data, z.len, 1, &out, n) == 0 && out.len == n); /* under the bound: whole */
  free(zeros);
  mf_buf_free(&z);
  mf_buf_free(&out);
  ws_deflate_free(tx);
  ws_deflate_free(rx);
}

int main(void) {
  test_lengths();
  test_unmask_split();
  test_bad_frames();
  test_utf8();
  test_close_payloads();
  test_handshake();
  test_negotiation();
  test_round_trip();
  test_bomb();
  TEST_DONE();
}
