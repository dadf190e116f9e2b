/* http_parse.h -- llhttp glue and the header store, for requests (the server) or responses (a client). */
#ifndef MOONFORK_HTTP_PARSE_H
#define MOONFORK_HTTP_PARSE_H

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct http_parse_s http_parse_t;

/* What the parser calls while it runs llhttp; each returns 0, or -1 to refuse the message (set
 * p->err_status first to say why). None of them may feed the same parser again. */
typedef struct {
  int (*on_begin)(http_parse_t *p);    /* a message begins (may be NULL) */
  /* The head is complete: method or status, URL, headers are in the store. Returns 0, 1 when the
   * message has no body whatever its headers say (a response to HEAD), or -1. */
  int (*on_head)(http_parse_t *p);
  int (*on_body)(http_parse_t *p, const char *at, size_t len); /* a piece of the (de-chunked) body */
} http_parse_callbacks_t;

/* The header store: as headers arrive they are packed, once, into the form the Lua binding hands on
 * as one string: per header, the name's and the value's lengths as native uint32s, then the name
 * and the value. The URL (request) or reason phrase (response) sits in the same buffer, before it. */
struct http_parse_s {
  llhttp_t llhttp;
  const http_parse_callbacks_t *cb;
  void *data;              /* the owner's */
  uint32_t max_head;       /* URL + header bytes (4 more per header) allowed: over it, 431 */
  int err_status;          /* set by a callback (or the store) that refused the message */
  mf_buf_t head;           /* the URL or reason, then the packed headers */
  uint32_t start_len;      /* bytes of URL or reason at the front of head */
  uint32_t head_bytes;     /* counted against max_head */
  uint32_t nheaders;
  uint32_t open_off;       /* offset of the lengths of the header being received */
  uint32_t trailer_off;    /* once the head is complete: where trailer fields (after a chunked body)
                              begin; they are kept apart from the headers (RFC 9110 §6.5.1) */
  unsigned name_open : 1;  /* llhttp is inside a header name (the entry is open) */
  unsigned complete : 1;   /* a message is complete (until http_parse_next) */
  unsigned keep_alive : 1; /* of the complete message */
  /* Checks made as the message arrives (see "hostile input" in http_parse.c). */
  unsigned tail_fold : 1;  /* the bytes fed so far end with LF and then only SP/HTAB */
  unsigned host_empty : 1; /* (request) the Host value is empty */
  unsigned te_seen : 1;    /* (request) a Transfer-Encoding line came */
  unsigned te_chunked : 1; /* its last coding so far is chunked */
  unsigned te_other : 1;   /* it names a coding other than chunked */
  unsigned te_bad : 1;     /* chunked is not the last coding, or comes twice */
  uint8_t hosts;           /* (request) Host lines seen, up to 2 */
  uint32_t ext_len;        /* chunk-extension bytes of the current chunk */
  uint64_t max_body;       /* body and chunk-extension bytes allowed: over it, 413 (init: no limit) */
  uint64_t body_bytes;     /* of this message, chunk extensions included */
  const char *feed_start;  /* the buffer http_parse_feed is running llhttp over */
};

/* The most bytes of chunk extensions one chunk may carry: over it, 400. */
#define HTTP_PARSE_MAX_CHUNK_EXT 4096

/* What http_parse_feed returns. */
#define HTTP_PARSE_MORE 0  /* all bytes taken; the message is not complete */
#define HTTP_PARSE_DONE 1  /* a message is complete: read it, then http_parse_next */
#define HTTP_PARSE_UPGRADE 2 /* a complete message that switches protocols: what follows is not HTTP */
#define HTTP_PARSE_ERROR (-1) /* a malformed or refused message (err_status, or 400) */

/* type: HTTP_REQUEST or HTTP_RESPONSE. cb is kept (not copied). Set max_body after this to limit
 * the body (the callbacks may check it too). */
void http_parse_init(http_parse_t *p, llhttp_type_t type, const http_parse_callbacks_t *cb, void *data,
                     uint32_t max_head);
void http_parse_free(http_parse_t *p);
/* Feeds bytes; *used says how many were taken (all but on DONE/UPGRADE, where the rest belongs to the
 * next message or to the new protocol). The message stays readable until http_parse_next. */
int http_parse_feed(http_parse_t *p, const char *data, size_t len, size_t *used);
/* The end of input (a response without a length ends there). HTTP_PARSE_DONE, MORE (nothing was
 * being parsed) or ERROR. */
int http_parse_finish(http_parse_t *p);
/* Lets the parser go on to the next message, giving back memory grown past `keep` bytes. */
void http_parse_next(http_parse_t *p, size_t keep);
/* Why the last feed failed, for a log line. */
const char *http_parse_error(const http_parse_t *p);

/* The message (valid from on_head until http_parse_next). */
static inline const char *http_parse_url(const http_parse_t *p, size_t *len) {
  *len = p->start_len;
  return p->head.data ? p->head.data : "";
}
static inline const char *http_parse_headers(const http_parse_t *p, size_t *len) {
  *len = (p->trailer_off ? p->trailer_off : p->head.len) - p->start_len;
  return p->head.data ? p->head.data + p->start_len : "";
}
/* The trailer fields of a chunked message, packed as the headers are (valid once it is complete). */
static inline const char *http_parse_trailers(const http_parse_t *p, size_t *len) {
  *len = p->trailer_off ? p->head.len - p->trailer_off : 0;
  return p->head.data && p->trailer_off ? p->head.data + p->trailer_off : "";
}
static inline const char *http_parse_method(const http_parse_t *p) {
  return llhttp_method_name((llhttp_method_t)p->llhttp.method);
}
static inline int http_parse_status(const http_parse_t *p) { return p->llhttp.status_code; }
/* Whether the connection may stay open after this request (valid from on_head; HTTP/1.0 with a
 * Transfer-Encoding is closed after its answer, RFC 9112 §6.1). */
static inline int http_parse_keep_alive(http_parse_t *p) {
  llhttp_t *l = &p->llhttp;
  return llhttp_should_keep_alive(l) != 0 && !(p->te_seen && l->http_major == 1 && l->http_minor == 0);
}
/* The value of the first header `name` (lower case), or NULL. */
const char *http_parse_find(const http_parse_t *p, const char *name, size_t *vlen);

/* Appends len bytes at `at` to b, a part of p's message: refuses the message with over_status when
 * `counted` (its size so far, these bytes included) is over max, with 500 when out of memory.
 * Returns 0 or -1 (the callback's answer to llhttp). */
int http_parse_append(http_parse_t *p, mf_buf_t *b, const char *at, size_t len, uint64_t counted, uint64_t max,
                      int over_status);

/* Walks a packed header block: fills name/value of the entry at *off and advances it. Returns 1, 0 at
 * the end, -1 when the block is not a packed one. */
int http_headers_next(const char *block, size_t len, size_t *off, const char **name, size_t *nlen,
                      const char **value, size_t *vlen);

#endif
