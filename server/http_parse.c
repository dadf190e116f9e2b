/* http_parse.c -- llhttp glue and the header store, for requests (the server) or responses (a client).
 *
 * llhttp calls back with pieces of the URL, header names and values as they arrive, possibly split
 * across reads. The store packs them, as they come, into the one form the Lua binding hands on (see
 * http_parse.h), so a request's headers are encoded once between the socket and Lua. The parser
 * pauses at the end of each message: the caller reads it, then calls http_parse_next. That keeps
 * responses in request order (the server) and lets a client take one response at a time. */
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

static int on_message_begin(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->head.len = 0;
  p->start_len = p->head_bytes = p->nheaders = p->trailer_off = 0;
  p->name_open = p->complete = p->keep_alive = 0;
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
  p->name_open = 0;
  if (store_add(p, at, len) != 0) return -1;
  store_grow(p, 1, len);
  return 0;
}

static int on_header_value_complete(llhttp_t *l) {
  parse_of(l)->name_open = 0; /* (an empty value has no on_header_value) */
  return 0;
}

static int on_headers_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->trailer_off = (uint32_t)p->head.len; /* what llhttp reports after this is a trailer */
  return p->cb->on_head(p);
}

static int on_body(llhttp_t *l, const char *at, size_t len) {
  http_parse_t *p = parse_of(l);
  return p->cb->on_body ? p->cb->on_body(p, at, len) : 0;
}

static int on_message_complete(llhttp_t *l) {
  http_parse_t *p = parse_of(l);
  p->complete = 1;
  p->keep_alive = llhttp_should_keep_alive(l) != 0;
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
};

void http_parse_init(http_parse_t *p, llhttp_type_t type, const http_parse_callbacks_t *cb, void *data,
                     uint32_t max_head) {
  memset(p, 0, sizeof *p);
  llhttp_init(&p->llhttp, type, &parse_settings);
  p->cb = cb;
  p->data = data;
  p->max_head = max_head;
}

void http_parse_free(http_parse_t *p) { mf_buf_free(&p->head); }

int http_parse_feed(http_parse_t *p, const char *data, size_t len, size_t *used) {
  llhttp_errno_t err = llhttp_execute(&p->llhttp, data, len);
  if (err == HPE_OK) {
    *used = len;
    return HTTP_PARSE_MORE;
  }
  if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && p->complete) {
    *used = (size_t)(llhttp_get_error_pos(&p->llhttp) - data);
    return err == HPE_PAUSED_UPGRADE || p->llhttp.upgrade ? HTTP_PARSE_UPGRADE : HTTP_PARSE_DONE;
  }
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
