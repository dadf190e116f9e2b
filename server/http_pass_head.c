/* http_pass_head.c -- the heads a passed request carries: the request rebuilt for the upstream, the
 * response filtered for the client.
 *
 * Pure functions over the packed header blocks the parser stores (http_parse.h), so the rules a proxy
 * must keep (hop-by-hop headers stop here, in both directions, with every header a Connection header
 * names: RFC 9110 7.6.1) are unit-tested without a socket (test/test_http_pass_head.c,
 * test_http_pass_upgrade.c). An upgrade is the one exception, made the way nginx's WebSocket recipe
 * makes it: the client's Upgrade value goes on with "Connection: upgrade", and a 101 comes back with
 * its Upgrade header and "Connection: upgrade". */
#include "http_pass.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_parse.h"

/* Whether name is a hop-by-hop header (RFC 9110 7.6.1), by length first: this runs for every header. */
static int pass_is_hop(const char *name, size_t n) {
  switch (n) {
    case 2: return strncasecmp(name, "te", 2) == 0;
    case 7: return strncasecmp(name, "trailer", 7) == 0 || strncasecmp(name, "upgrade", 7) == 0;
    case 10: return strncasecmp(name, "connection", 10) == 0 || strncasecmp(name, "keep-alive", 10) == 0;
    case 16: return strncasecmp(name, "proxy-connection", 16) == 0;
    case 17: return strncasecmp(name, "transfer-encoding", 17) == 0;
    case 18: return strncasecmp(name, "proxy-authenticate", 18) == 0;
    case 19: return strncasecmp(name, "proxy-authorization", 19) == 0;
    default: return 0;
  }
}

/* Whether `list` (comma- or space-separated tokens, any case; NUL-free, len bytes) holds name. */
static int pass_in_list(const char *list, size_t len, const char *name, size_t n) {
  size_t i = 0;
  while (i < len) {
    while (i < len && (list[i] == ',' || list[i] == ' ' || list[i] == '\t')) i++;
    size_t s = i;
    while (i < len && list[i] != ',' && list[i] != ' ' && list[i] != '\t') i++;
    if (i - s == n && strncasecmp(list + s, name, n) == 0) return 1;
  }
  return 0;
}

/* Whether one of the Connection headers of the block names `name`. */
static int pass_named(const char *block, size_t len, const char *name, size_t n) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  while (http_headers_next(block, len, &off, &hn, &nl, &v, &vl) == 1)
    if (nl == 10 && strncasecmp(hn, "connection", 10) == 0 && pass_in_list(v, vl, name, n)) return 1;
  return 0;
}

/* Whether a Connection value names any header but keep-alive and close (rare: when none does, nobody
 * needs to look for the names). */
static int pass_value_names(const char *v, size_t vl) {
  for (size_t i = 0; i < vl;) {
    while (i < vl && (v[i] == ',' || v[i] == ' ' || v[i] == '\t')) i++;
    size_t st = i;
    while (i < vl && v[i] != ',' && v[i] != ' ' && v[i] != '\t') i++;
    if (i > st && !(i - st == 5 && strncasecmp(v + st, "close", 5) == 0) &&
        !(i - st == 10 && strncasecmp(v + st, "keep-alive", 10) == 0))
      return 1;
  }
  return 0;
}

/* Whether a Connection header of the block names any header but keep-alive and close. */
static int pass_names_any(const char *block, size_t len) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  while (http_headers_next(block, len, &off, &hn, &nl, &v, &vl) == 1)
    if (nl == 10 && strncasecmp(hn, "connection", 10) == 0 && pass_value_names(v, vl)) return 1;
  return 0;
}

static int pass_is(const char *name, size_t n, const char *lit) {
  return strlen(lit) == n && strncasecmp(name, lit, n) == 0;
}

static int pass_line(mf_buf_t *out, const char *name, size_t n, const char *v, size_t vl) {
  if (mf_buf_reserve(out, n + vl + 4) != 0) return -1;
  mf_buf_append(out, name, n);
  mf_buf_append(out, ": ", 2);
  mf_buf_append(out, v, vl);
  return mf_buf_append(out, "\r\n", 2);
}

/* The client's X-Forwarded-For values, joined by ", ", then remote. */
static int pass_xff(mf_buf_t *out, const char *block, size_t len, const char *remote) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  int any = 0;
  if (mf_buf_append(out, "X-Forwarded-For: ", 17) != 0) return -1;
  while (http_headers_next(block, len, &off, &hn, &nl, &v, &vl) == 1) {
    if (!pass_is(hn, nl, "x-forwarded-for")) continue;
    if ((any && mf_buf_append(out, ", ", 2) != 0) || mf_buf_append(out, v, vl) != 0) return -1;
    any = 1;
  }
  if ((any && mf_buf_append(out, ", ", 2) != 0) || mf_buf_append(out, remote, strlen(remote)) != 0) return -1;
  return mf_buf_append(out, "\r\n", 2);
}

int http_pass_request_head(mf_buf_t *out, const http_pass_req_t *r) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  int host = 0, named = pass_names_any(r->headers, r->headers_len);
  if (mf_buf_append(out, r->method, strlen(r->method)) != 0 || mf_buf_append(out, " ", 1) != 0 ||
      mf_buf_append(out, r->target, r->target_len) != 0 ||
      mf_buf_append(out, " HTTP/1.1\r\n", 11) != 0)
    return -1;
  while (http_headers_next(r->headers, r->headers_len, &off, &hn, &nl, &v, &vl) == 1) {
    if (pass_is_hop(hn, nl) || pass_is(hn, nl, "expect") || pass_is(hn, nl, "content-length") ||
        (r->remote && pass_is(hn, nl, "x-forwarded-for")) || (r->drop && pass_in_list(r->drop, strlen(r->drop), hn, nl)) ||
        (named && pass_named(r->headers, r->headers_len, hn, nl)))
      continue;
    host |= pass_is(hn, nl, "host");
    if (pass_line(out, hn, nl, v, vl) != 0) return -1;
  }
  if (!host && r->host && mf_buf_appendf(out, "Host: %s\r\n", r->host) != 0) return -1;
  if (r->remote && pass_xff(out, r->headers, r->headers_len, r->remote) != 0) return -1;
  if (r->upgrade && (mf_buf_append(out, "Upgrade: ", 9) != 0 || mf_buf_append(out, r->upgrade, r->upgrade_len) != 0 ||
                     mf_buf_append(out, "\r\nConnection: upgrade\r\n", 23) != 0))
    return -1;
  if (r->extra_len && mf_buf_append(out, r->extra, r->extra_len) != 0) return -1;
  if (r->body == HTTP_PASS_BODY_LENGTH) {
    char num[24], *p = num + sizeof num;
    uint64_t n = r->body_len;
    do *--p = (char)('0' + n % 10); while ((n /= 10) != 0);
    if (mf_buf_append(out, "Content-Length: ", 16) != 0 || mf_buf_append(out, p, (size_t)(num + sizeof num - p)) != 0 ||
        mf_buf_append(out, "\r\n", 2) != 0)
      return -1;
  }
  if (r->body == HTTP_PASS_BODY_CHUNKED && mf_buf_append(out, "Transfer-Encoding: chunked\r\n", 28) != 0) return -1;
  return mf_buf_append(out, "\r\n", 2);
}

const char *http_pass_upgrade_of(const char *headers, size_t len, size_t *vlen) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  if (!pass_named(headers, len, "upgrade", 7)) return NULL;
  while (http_headers_next(headers, len, &off, &hn, &nl, &v, &vl) == 1)
    if (vl > 0 && pass_is(hn, nl, "upgrade")) {
      *vlen = vl;
      return v;
    }
  return NULL;
}

int http_pass_upgrade_head(mf_buf_t *out, const char *headers, size_t len) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  int named = pass_names_any(headers, len);
  while (http_headers_next(headers, len, &off, &hn, &nl, &v, &vl) == 1) {
    int upgrade = pass_is(hn, nl, "upgrade"); /* hop-by-hop, but the 101 is about it */
    if ((!upgrade && (pass_is_hop(hn, nl) || (named && pass_named(headers, len, hn, nl)))) || pass_is(hn, nl, "date") ||
        pass_is(hn, nl, "content-length"))
      continue;
    if (pass_line(out, hn, nl, v, vl) != 0) return -1;
  }
  return mf_buf_append(out, "Connection: upgrade\r\n", 21);
}

int http_pass_response_head(mf_buf_t *out, const char *headers, size_t len, int64_t *clen) {
  size_t off = 0, nl, vl;
  const char *hn, *v;
  int chunked = 0, named = 0;
  *clen = -1;
  while (http_headers_next(headers, len, &off, &hn, &nl, &v, &vl) == 1) {
    if (nl == 17) chunked |= strncasecmp(hn, "transfer-encoding", 17) == 0;
    if (nl == 10 && strncasecmp(hn, "connection", 10) == 0) named |= pass_value_names(v, vl);
  }
  off = 0;
  while (http_headers_next(headers, len, &off, &hn, &nl, &v, &vl) == 1) {
    if (pass_is_hop(hn, nl) || pass_is(hn, nl, "date") || (named && pass_named(headers, len, hn, nl))) continue;
    if (pass_is(hn, nl, "content-length")) {
      if (chunked || *clen >= 0) continue; /* framing is the core's: one length, never beside chunked */
      char num[24];
      if (vl == 0 || vl >= sizeof num) continue;
      memcpy(num, v, vl);
      num[vl] = 0;
      char *end;
      unsigned long long n = strtoull(num, &end, 10);
      if (*end != 0 || num[0] < '0' || num[0] > '9') continue;
      *clen = (int64_t)n;
    }
    if (pass_line(out, hn, nl, v, vl) != 0) return -1;
  }
  return 0;
}
