/* http_parse.c -- llhttp glue and the header store, for requests (the server) or responses (a client).
 *
 * llhttp calls back with pieces of the URL, header names and values as they arrive, possibly split
 * across reads. The store packs them, as they come, into the one form the Lua binding hands on (see
 * http_parse.h), so a request's headers are encoded once between the socket and Lua. The parser
 * pauses at the end of each message: the caller reads it, then calls http_parse_next. That keeps
 * responses in request order (the server) and lets a client take one response at a time.
 *
 * Hostile input is refused here, in the callbacks, as the bytes arrive (no second pass over the head):
 * see the "hostile input" section below for what and why. */
#include "http_parse.h"

#include <string.h>
#include <strings.h>

static http_parse_t *parse_of(llhttp_t *l) { return mf_container_of(l, http_parse_t, llhttp); }

int http_parse_append(http_parse_t *p, mf_buf_t *b, const char *at, size_t len, uint64_t counted, uint64_t max,
                      int over_status) {
  if (counted > max) {
    p->err_status = over_status;
    return -1;
  }
  if (mf_buf_append(b, at, len) != 0) {
    p->err_status = 500;
    return -1;
  }
  return 0;
}

/* Appends URL or header bytes, counting them against max_head. */
static int store_add(http_parse_t *p, const char *at, size_t len) {
  p->head_bytes += (uint32_t)len;
  return http_parse_append(p, &p->head, at, len, p->head_bytes, p->max_head, 431);
}

/* Adds len to the name (which = 0) or value (which = 1) length of the open entry. */
static void store_grow(http_parse_t *p, int which, size_t len) {
  uint32_t n;
  char *at = p->head.data + p->open_off + (size_t)which * sizeof n;
  memcpy(&n, at, sizeof n);
  n += (uint32_t)len;
  memcpy(at, &n, sizeof n);
}

/* ---- hostile input ------------------------------------------------------------------------------
 * What llhttp 8.1 (Debian 12's) lets through and a server must not:
 *  - obs-fold (RFC 9112 §5.2): a header line that begins with SP or HTAB is folded into the previous
 *    value, so " Content-Length: 45" vanishes into Host and a body becomes a smuggled request
 *    (CVE-2024-27982, fixed in llhttp 8.1.2). Refused in both modes, whatever the llhttp version.
 *  - requests only: Host missing (1.1), repeated, or not a plain host[:port] (RFC 9112 §3.2); a
 *    Transfer-Encoding whose last coding is not chunked, even an empty one (§6.1, §6.3); other
 *    codings before chunked (501: we decode none); versions other than 1.x (505); methods llhttp does
 *    not know (501); "*" but for OPTIONS; CONNECT (405: nothing in the script API tunnels).
 *  - an empty header name; chunk extensions without bound (they count toward max_body, and one chunk
 *    may carry HTTP_PARSE_MAX_CHUNK_EXT bytes of them).
 * Trailing SP/HTAB of a value is trimmed (llhttp trims only the leading). */

static int is_request(const http_parse_t *p) { return p->llhttp.type == HTTP_REQUEST; }

static int refuse(http_parse_t *p, int status) {
  p->err_status = status;
  return -1;
}

/* A value piece at `at` follows a line break and whitespace only: the line was folded. A piece that
 * continues a value cut by the end of a read starts the buffer, after bytes that ended mid-value. */
static int value_folded(const http_parse_t *p, const char *at) {
  const char *q = at;
  while (q > p->feed_start && (q[-1] == ' ' || q[-1] == '\t')) q--;
  return q > p->feed_start ? q[-1] == '\n' : p->tail_fold;
}

/* Keeps tail_fold for the next feed: do the bytes fed so far end with LF and only SP/HTAB after it? */
static void note_tail(http_parse_t *p, const char *data, size_t len) {
  while (len > 0 && (data[len - 1] == ' ' || data[len - 1] == '\t')) len--;
  if (len > 0) p->tail_fold = data[len - 1] == '\n'; /* (all whitespace: as it was) */
}

/* Host = uri-host [ ":" port ]: letters, digits, the unreserved and sub-delims but the comma, '%',
 * ':' and the brackets of an IPv6 literal. No userinfo ('@'), path, list or whitespace. */
static int host_valid(const char *v, size_t n) {
  static const char ok[] = "-._~!$&'()*+;=%:[]";
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)v[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          (ch != '\0' && strchr(ok, ch) != NULL)))
      return 0;
  }
  return 1;
}

/* One Transfer-Encoding line: its codings, in order, after those of earlier lines. */
static void te_note(http_parse_t *p, const char *v, size_t n) {
  p->te_seen = 1;
  size_t i = 0;
  while (i < n) {
    size_t end = i;
    while (end < n && v[end] != ',') end++;
    size_t a = i, b = end;
    while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
    if (b > a) { /* (empty list elements are allowed and mean nothing) */
      if (p->te_chunked) p->te_bad = 1; /* something after chunked, or chunked twice */
      p->te_chunked = b - a == 7 && strncasecmp(v + a, "chunked", 7) == 0;
      if (!p->te_chunked) p->te_other = 1;
    }
    i = end + 1;
  }
}

/* The value of the open entry is complete: trim it, and look at the headers that frame a request. */
static int value_done(http_parse_t *p) {
  uint32_t lens[2];
  char *entry = p->head.data + p->open_off;
  memcpy(lens, entry, sizeof lens);
  const char *name = entry + sizeof lens, *value = name + lens[0];
  while (lens[1] > 0 && (value[lens[1] - 1] == ' ' || value[lens[1] - 1] == '\t')) {
    lens[1]--;
    p->head.len--; /* the value is the last thing in the store */
  }
  memcpy(entry + sizeof lens[0], &lens[1], sizeof lens[1]);
  if (!is_request(p) || p->trailer_off > 0) return 0; /* a trailer frames nothing: it is kept apart */
  if (lens[0] == 4 && strncasecmp(name, "host", 4) == 0) {
    if (p->hosts++ > 0 || !host_valid(value, lens[1])) return refuse(p, 400);
    p->host_empty = lens[1] == 0;
  } else if (lens[0] == 17 && strncasecmp(name, "transfer-encoding", 17) == 0) {
    te_note(p, value, lens[1]);
  }
  return 0;
}

/* Does the request target (absolute-form) name an authority ("scheme://authority...")? */
static int target_has_authority(const http_parse_t *p) {
  size_t n;
  const char *url = http_parse_url(p, &n);
  if (n == 0 || url[0] == '/' || url[0] == '*') return 0;
  for (size_t i = 0; i + 3 < n; i++)
    if (url[i] == ':' && url[i + 1] == '/' && url[i + 2] == '/') return url[i + 3] != '/';
  return 0;
}

/* The head of a request is complete: the checks that need all its lines. */
static int request_head_check(http_parse_t *p) {
  const llhttp_t *l = &p->llhttp;
  if (l->http_major != 1) return refuse(p, 505); /* "GET /" without a version: llhttp takes it as 0.9 */
  if (p->hosts == 0 && l->http_minor >= 1) return refuse(p, 400);
  if (p->host_empty && target_has_authority(p)) return refuse(p, 400);
  if (p->te_seen) {
    if (p->te_bad || !p->te_chunked) return refuse(p, 400);
    if (p->te_other) return refuse(p, 501);
  }
  return 0;
}

/* After llhttp refused a method it does not know: is the rest of the line a well-formed request line
 * ("token SP target SP HTTP/d.d CRLF")? Then the method is only unknown (501), not malformed (400).
 * Looks only at the bytes of this feed: a line cut by the end of a read gets 400. */
static int unknown_method(const char *at, const char *end) {
  static const char tchar[] = "!#$%&'*+-.^_`|~";
  while (at < end && ((*at >= 'A' && *at <= 'Z') || (*at >= 'a' && *at <= 'z') || (*at >= '0' && *at <= '9') ||
                      (*at != '\0' && strchr(tchar, *at) != NULL)))
    at++;
  if (at == end || *at++ != ' ') return 0;
  const char *target = at;
  while (at < end && *at > ' ' && *at < 0x7f) at++;
  if (at == target || end - at < 11 || memcmp(at, " HTTP/", 6) != 0) return 0;
  at += 6;
  return at[0] >= '0' && at[0] <= '9' && at[1] == '.' && at[2] >= '0' && at[2] <= '9' && at[3] == '\r' &&
         at[4] == '\n';
}

static int on_method_complete(llhttp_t *l) {
  return l->method == HTTP_CONNECT ? refuse(parse_of(l), 405) : 0;
}

/* The request line is complete (a version that is not 1.x first: "PRI * HTTP/2.0" gets 505). */
static int on_version_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  if (!is_request(p)) return 0;
  if (l->http_major != 1) return refuse(p, 505);
  size_t n;
  const char *url = http_parse_url(p, &n);
  return n == 1 && url[0] == '*' && l->method != HTTP_OPTIONS ? refuse(p, 400) : 0;
}

static int on_header_field_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  uint32_t nlen = 0;
  if (p->name_open) memcpy(&nlen, p->head.data + p->open_off, sizeof nlen);
  return nlen > 0 ? 0 : refuse(p, 400); /* ": value": an empty name */
}

static int on_chunk_extension(llhttp_t *l, const char *at, size_t len) {
  http_parse_t *p = parse_of(l);
  (void)at;
  p->ext_len += (uint32_t)len;
  p->body_bytes += len;
  if (p->ext_len > HTTP_PARSE_MAX_CHUNK_EXT) return refuse(p, 400);
  return p->body_bytes > p->max_body ? refuse(p, 413) : 0;
}

static int on_chunk_header(llhttp_t *l) {
  parse_of(l)->ext_len = 0; /* the next chunk's extensions start afresh */
  return 0;
}

/* ---- the store ---------------------------------------------------------------------------------- */

static int on_message_begin(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->head.len = 0;
  p->start_len = p->head_bytes = p->nheaders = p->trailer_off = 0;
  p->name_open = p->complete = p->keep_alive = 0;
  p->host_empty = p->te_seen = p->te_chunked = p->te_other = p->te_bad = 0;
  p->hosts = 0;
  p->ext_len = 0;
  p->body_bytes = 0;
  p->err_status = 0;
  return p->cb->on_begin ? p->cb->on_begin(p) : 0;
}

/* The URL of a request, the reason phrase of a response: both come before any header. */
static int on_start(llhttp_t *l, const char *at, size_t len) {
  http_parse_t *p = parse_of(l);
  if (store_add(p, at, len) != 0) return -1;
  p->start_len += (uint32_t)len;
  return 0;
}

static int on_header_field(llhttp_t *l, const char *at, size_t len) {
  http_parse_t *p = parse_of(l);
  if (!p->name_open) { /* a new header begins: its two lengths, then the name */
    static const uint32_t zero[2];
    p->head_bytes += 4; /* ": " and CRLF count against the limit too */
    p->open_off = (uint32_t)p->head.len;
    if (mf_buf_append(&p->head, zero, sizeof zero) != 0) {
      p->err_status = 500;
      return -1;
    }
    p->name_open = 1;
    p->nheaders++;
  }
  if (store_add(p, at, len) != 0) return -1;
  store_grow(p, 0, len);
  return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len) {
  http_parse_t *p = parse_of(l);
  if (len > 0 && value_folded(p, at)) return refuse(p, 400); /* (an empty value: an empty piece after CRLF) */
  p->name_open = 0;
  if (store_add(p, at, len) != 0) return -1;
  store_grow(p, 1, len);
  return 0;
}

static int on_header_value_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->name_open = 0; /* (an empty value may have no on_header_value) */
  return value_done(p);
}

static int on_headers_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->trailer_off = (uint32_t)p->head.len; /* what llhttp reports after this is a trailer */
  if (is_request(p) && request_head_check(p) != 0) return -1;
  return p->cb->on_head(p);
}

static int on_body(llhttp_t *l, const char *at, size_t len) {
  http_parse_t *p = parse_of(l);
  p->body_bytes += len;
  if (p->body_bytes > p->max_body) return refuse(p, 413);
  return p->cb->on_body ? p->cb->on_body(p, at, len) : 0;
}

static int on_message_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->complete = 1;
  /* HTTP/1.0 has no Transfer-Encoding: its framing is suspect, so close after the answer (§6.1). */
  p->keep_alive = http_parse_keep_alive(p);
  return HPE_PAUSED; /* one message at a time: see the top of this file */
}

static const llhttp_settings_t parse_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_start,
    .on_status = on_start,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_method_complete = on_method_complete,
    .on_version_complete = on_version_complete,
    .on_header_field_complete = on_header_field_complete,
    .on_chunk_extension_name = on_chunk_extension,
    .on_chunk_extension_value = on_chunk_extension,
    .on_chunk_header = on_chunk_header,
};

void http_parse_init(http_parse_t *p, llhttp_type_t type, const http_parse_callbacks_t *cb, void *data,
                     uint32_t max_head) {
  memset(p, 0, sizeof *p);
  llhttp_init(&p->llhttp, type, &parse_settings);
  p->cb = cb;
  p->data = data;
  p->max_head = max_head;
  p->max_body = UINT64_MAX;
}

void http_parse_free(http_parse_t *p) { mf_buf_free(&p->head); }

int http_parse_feed(http_parse_t *p, const char *data, size_t len, size_t *used) {
  p->feed_start = data;
  llhttp_errno_t err = llhttp_execute(&p->llhttp, data, len);
  if (err == HPE_OK) {
    note_tail(p, data, len);
    *used = len;
    return HTTP_PARSE_MORE;
  }
  if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && p->complete) {
    *used = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
    note_tail(p, data, *used);
    return err == HPE_PAUSED_UPGRADE || p->llhttp.upgrade ? HTTP_PARSE_UPGRADE : HTTP_PARSE_DONE;
  }
  if (err == HPE_INVALID_METHOD && p->err_status == 0 && is_request(p) &&
      unknown_method(llhttp_get_error_pos(&p->llhttp), data + len))
    p->err_status = 501;
  *used = 0;
  return HTTP_PARSE_ERROR;
}

int http_parse_finish(http_parse_t *p) {
  llhttp_errno_t err = llhttp_finish(&p->llhttp);
  if (p->complete) return HTTP_PARSE_DONE;
  return err == HPE_OK ? HTTP_PARSE_MORE : HTTP_PARSE_ERROR;
}

void http_parse_next(http_parse_t *p, size_t keep) {
  if (llhttp_get_errno(&p->llhttp) == HPE_PAUSED) llhttp_resume(&p->llhttp);
  p->complete = 0;
  p->start_len = p->nheaders = p->trailer_off = 0;
  mf_buf_reset(&p->head, keep);
}

const char *http_parse_error(const http_parse_t *p) {
  const char *reason = llhttp_get_error_reason(&p->llhttp);
  return reason ? reason : "";
}

int http_headers_next(const char *block, size_t len, size_t *off, const char **name, size_t *nlen,
                      const char **value, size_t *vlen) {
  uint32_t lens[2];
  if (*off >= len) return 0;
  if (len - *off < sizeof lens) return -1;
  memcpy(lens, block + *off, sizeof lens);
  size_t rest = len - *off - sizeof lens;
  if (lens[0] > rest || lens[1] > rest - lens[0]) return -1;
  *name = block + *off + sizeof lens;
  *nlen = lens[0];
  *value = *name + lens[0];
  *vlen = lens[1];
  *off += sizeof lens + lens[0] + lens[1];
  return 1;
}

const char *http_parse_find(const http_parse_t *p, const char *name, size_t *vlen) {
  size_t len, off = 0, n = strlen(name), hn;
  const char *block = http_parse_headers(p, &len), *hname, *value;
  while (http_headers_next(block, len, &off, &hname, &hn, &value, vlen) == 1)
    if (hn == n && strncasecmp(hname, name, n) == 0) return value;
  return NULL;
}
