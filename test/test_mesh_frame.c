/* test_mesh_frame.c -- unit tests for server/mesh_frame.c: the mesh's length-prefixed frames. */
#include <uv.h>

#include "../server/mesh_frame.h"
#include "test.h"

typedef struct {
  int n;
  char msgs[8][32];
  size_t lens[8];
  int stop_after; /* on_frame asks to stop after this many (0: never) */
} seen_t;

static int on_frame(void *arg, const char *msg, size_t len) {
  seen_t *s = arg;
  if (s->n < 8 && len < sizeof s->msgs[0]) {
    memcpy(s->msgs[s->n], msg, len);
    s->msgs[s->n][len] = '\0';
    s->lens[s->n] = len;
  }
  s->n++;
  return s->stop_after && s->n >= s->stop_after;
}

/* Appends a frame holding msg to buf at *len. */
static void put_frame(char *buf, size_t *len, const char *msg) {
  size_t n = strlen(msg);
  mesh_frame_encode((unsigned char *)buf + *len, (uint32_t)n);
  memcpy(buf + *len + MESH_FRAME_HEAD, msg, n);
  *len += MESH_FRAME_HEAD + n;
}

static void test_encode(void) {
  unsigned char h[4];
  mesh_frame_encode(h, 0x01020304);
  CHECK(h[0] == 1 && h[1] == 2 && h[2] == 3 && h[3] == 4);
  CHECK(mesh_frame_len((const char *)h) == 0x01020304);
  mesh_frame_encode(h, 0xfffffffe);
  CHECK(mesh_frame_len((const char *)h) == 0xfffffffe);
  CHECK(mesh_frame_need((const char *)h, 2) == MESH_FRAME_HEAD); /* length not known yet */
  mesh_frame_encode(h, 5);
  CHECK(mesh_frame_need((const char *)h, 4) == 9);
}

static void test_split(void) {
  char buf[256];
  size_t len = 0;
  put_frame(buf, &len, "hello");
  put_frame(buf, &len, "");
  put_frame(buf, &len, "world");
  size_t whole = len;
  put_frame(buf, &len, "partial");
  seen_t s = {0};
  /* three whole frames, the fourth cut short: it is left */
  CHECK(mesh_frame_split(buf, len - 3, 1024, on_frame, &s) == (ssize_t)whole);
  CHECK(s.n == 3);
  CHECK_STR(s.msgs[0], "hello");
  CHECK(s.lens[1] == 0);
  CHECK_STR(s.msgs[2], "world");
  /* a cut inside the length prefix */
  s.n = 0;
  CHECK(mesh_frame_split(buf, 2, 1024, on_frame, &s) == 0 && s.n == 0);
  /* the reader stops after the first */
  seen_t stop = {.stop_after = 1};
  CHECK(mesh_frame_split(buf, len, 1024, on_frame, &stop) == 9 && stop.n == 1);
  /* a length over the limit */
  s.n = 0;
  CHECK(mesh_frame_split(buf, len, 4, on_frame, &s) == UV_EMSGSIZE);
}

static void test_fill(void) {
  char buf[64];
  size_t len = 0;
  put_frame(buf, &len, "abcdef");
  put_frame(buf, &len, "next");
  /* the frame arrives in pieces of 1, 2, 5 and the rest (with the next frame behind it) */
  mf_buf_t in;
  mf_buf_init(&in);
  const char *d = buf;
  size_t n = 1;
  CHECK(mesh_frame_fill(&in, &d, &n, 1024) == 0 && n == 0 && in.len == 1);
  n = 2;
  CHECK(mesh_frame_fill(&in, &d, &n, 1024) == 0 && n == 0 && in.len == 3);
  n = 5;
  CHECK(mesh_frame_fill(&in, &d, &n, 1024) == 0 && n == 0 && in.len == 8);
  n = len - 8;
  CHECK(mesh_frame_fill(&in, &d, &n, 1024) == 1);
  CHECK(in.len == 10 && memcmp(in.data + MESH_FRAME_HEAD, "abcdef", 6) == 0);
  CHECK(n == 8 && d == buf + 10); /* the next frame is left in the input */
  mf_buf_free(&in);
  /* a held length over the limit */
  mf_buf_init(&in);
  d = buf;
  n = len;
  CHECK(mesh_frame_fill(&in, &d, &n, 3) == UV_EMSGSIZE);
  mf_buf_free(&in);
}

int main(void) {
  test_encode();
  test_split();
  test_fill();
  TEST_DONE();
}
