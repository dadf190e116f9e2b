/* httpc_parse.h -- an HTTP/1.1 response, parsed for the client: head, de-chunked body, framing. */
#ifndef MOONFORK_HTTPC_PARSE_H
#define MOONFORK_HTTPC_PARSE_H

#include "http_parse.h"

/* The most bytes of reason phrase and header fields a response head may carry. */
#define HTTPC_MAX_HEAD (64 * 1024)

/* One response at a time: httpc_parse_start before each (a 1xx interim response is one too). The
 * body is collected in `body`: per feed (the pieces of that feed, for a caller that streams), or
 * whole (every piece until the end, for a caller that wants the body as one string). */
typedef struct {
  http_parse_t parse;
  mf_buf_t body;          /* body bytes not yet handed out (owned) */
  const char *piece;      /* a feed's only body piece so far, still in the caller's buffer: not copied */
  size_t piece_len;
  unsigned no_body : 1;   /* the request was HEAD: no body whatever the headers say */
  unsigned whole : 1;     /* keep the body until the end */
  unsigned headed : 1;    /* the head is complete */
} httpc_parse_t;

void httpc_parse_init(httpc_parse_t *c);
void httpc_parse_free(httpc_parse_t *c);
/* Expects a new response (after any earlier one, complete or failed): the parser starts afresh. A
 * body over max_body bytes (chunk extensions included) is refused. */
void httpc_parse_start(httpc_parse_t *c, int no_body, uint64_t max_body, int whole);
/* Feeds len bytes: HTTP_PARSE_MORE, DONE, UPGRADE (a 101: what follows is not HTTP) or ERROR (see
 * httpc_parse_error). *used says how many bytes were taken (on DONE the rest follows the response).
 * The body bytes to hand out are then httpc_parse_body's. */
int httpc_parse_feed(httpc_parse_t *c, const char *data, size_t len, size_t *used);
/* The peer closed: DONE for a body that ends there (no length), else ERROR (or MORE: nothing began). */
int httpc_parse_finish(httpc_parse_t *c);
/* The body bytes ready to hand out: those of the last feed, or the whole body once DONE; *len 0 when
 * none. Valid until the next feed (they may lie in the buffer that feed was given). */
const char *httpc_parse_body(const httpc_parse_t *c, size_t *len);
/* Why the response was refused, as a script sees it ("malformed response: ...", "response body larger
 * than maxBody (N bytes)"), written into buf. */
const char *httpc_parse_error(const httpc_parse_t *c, char *buf, size_t len);

#endif
