/* util.h -- small shared helpers: growable byte buffers, number and duration parsing, HTTP dates. */
#ifndef MOONFORK_UTIL_H
#define MOONFORK_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MF_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
/* "No reference" in a C object's slot for its Lua binding (http_conn_user_ref, mesh_peer_user_ref):
 * the value of LUA_NOREF, the binding kit's one sentinel (bind_obj.c checks that they agree). */
#define MF_NO_REF (-2)
#define mf_container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* A growable byte buffer. The buffer owns `data` (malloc'ed); mf_buf_free releases it. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
} mf_buf_t;

void mf_buf_init(mf_buf_t *b);
void mf_buf_free(mf_buf_t *b);
/* Ensures room for `extra` more bytes. Returns 0, or -1 when out of memory (nothing changed). */
int mf_buf_reserve(mf_buf_t *b, size_t extra);
/* Appends n bytes. Inline: response heads are assembled from many small pieces. */
static inline int mf_buf_append(mf_buf_t *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (b->cap - b->len < n && mf_buf_reserve(b, n) != 0) return -1;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}
int mf_buf_appendf(mf_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void mf_buf_consume(mf_buf_t *b, size_t n);
/* Empties the buffer and, when it grew past `keep` bytes, gives its memory back. */
void mf_buf_reset(mf_buf_t *b, size_t keep);

/* Parsers for command-line and listen() values. Each returns 0 and stores the value, or -1. */
int mf_parse_int(const char *s, long min, long max, long *out);
/* Seconds, possibly fractional ("0.5", "10"), into milliseconds; must be >= 0. */
int mf_parse_seconds(const char *s, uint64_t *out_ms);
/* Bytes with an optional k/m/g suffix (powers of 1024). */
int mf_parse_size(const char *s, uint64_t *out);

/* Formats `t` as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into buf (at least 30 bytes). */
size_t mf_http_date(time_t t, char *buf);

/* Standard reason phrase for an HTTP status code ("Unknown" for codes it does not know). */
const char *mf_http_reason(int status);

#endif
