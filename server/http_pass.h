/* http_pass.h -- a request passed to an upstream in C: pooled connections, bytes relayed both ways. */
#ifndef MOONFORK_HTTP_PASS_H
#define MOONFORK_HTTP_PASS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http.h"
#include "util.h"

/* ---- heads (http_pass_head.c: pure, unit-tested) ---------------------------------------------- */

/* How the request body goes on. */
enum { HTTP_PASS_BODY_NONE, HTTP_PASS_BODY_LENGTH, HTTP_PASS_BODY_CHUNKED };

typedef struct {
  const char *method, *target;
  size_t target_len;
  const char *headers; /* the client's headers, packed as http_parse.h stores them */
  size_t headers_len;
  const char *remote;  /* appended to X-Forwarded-For (NULL: none) */
  const char *host;    /* Host when the client sent none */
  const char *extra;   /* header lines added as they are ("Name: value\r\n" each), may be NULL */
  size_t extra_len;
  const char *drop;    /* more header names to remove: lower case, each followed by ',' ("a,b,"), or NULL */
  int body;            /* HTTP_PASS_BODY_* */
  uint64_t body_len;   /* for HTTP_PASS_BODY_LENGTH */
  const char *upgrade; /* the protocols to ask the upstream to switch to (an Upgrade value), or NULL */
  size_t upgrade_len;
} http_pass_req_t;

/* Appends the upstream request's head to out: the request line (HTTP/1.1), the client's headers minus
 * the hop-by-hop ones (RFC 9110 7.6.1), those named by Connection, Expect, Content-Length and the
 * names in `drop`; X-Forwarded-For with remote appended; Host if missing; `upgrade` as "Upgrade: ..."
 * with "Connection: upgrade" (nginx's proxy_set_header pair for WebSockets); `extra`; the body's
 * framing. 0, or -1 when out of memory. */
int http_pass_request_head(mf_buf_t *out, const http_pass_req_t *r);
/* The value of the client's (first) Upgrade header when a Connection header names "upgrade" (the
 * client asks to switch protocols: RFC 9110 7.8), else NULL. Points into headers. */
const char *http_pass_upgrade_of(const char *headers, size_t len, size_t *vlen);

/* Appends the header lines of a response to pass on to the client ("Name: value\r\n" each) from the
 * upstream's packed headers: hop-by-hop ones, those named by Connection, and Date (the server sends
 * its own) removed. *clen: the Content-Length to hold the body to, or -1 (none, or chunked). 0 or -1
 * (out of memory). */
int http_pass_response_head(mf_buf_t *out, const char *headers, size_t len, int64_t *clen);
/* The header lines of a 101 to pass on to the client: as http_pass_response_head's, but Upgrade is
 * kept, and "Connection: upgrade" ends them (as nginx sends a 101); no Content-Length. 0 or -1. */
int http_pass_upgrade_head(mf_buf_t *out, const char *headers, size_t len);

/* ---- exchanges (http_pass.c) --------------------------------------------------------------------- */

typedef struct http_pass_s http_pass_t;

/* An upstream and how to talk to it. */
typedef struct {
  const char *name;            /* the pool's key: "host:port" or "unix:/path" */
  const struct sockaddr *addr; /* a resolved TCP address, or NULL for a Unix socket (path) */
  const char *path;
  unsigned pool_size;          /* idle connections kept (0: none) */
  uint64_t idle_ms;            /* an idle connection is closed after it (0: never) */
  uint64_t connect_ms, send_ms, read_ms;
  uint64_t max_body;           /* the largest response body passed on (UINT64_MAX: any) */
  uint64_t tunnel_ms;          /* a tunnel (after a 101) is closed after this long idle (0: never) */
} http_pass_upstream_t;

/* How an exchange ended, for its owner's callback. status: the upstream's (0 when there was no
 * response; 101 when the client's connection became a tunnel to the upstream); err NULL or why it
 * failed; sent: a byte of the response reached the client. */
typedef void (*http_pass_done_cb)(void *arg, int status, const char *err, int sent);

void http_pass_init(uv_loop_t *loop, http_pass_done_cb done);
/* Starts passing request `gen` of c (its head already parsed: r, with its body's framing; `body`
 * the whole body when it had arrived, else NULL and it is read from c as it comes) to `up`. `arg`
 * goes to the done callback, which runs later, never during this call. 0, or a negative UV_E* code
 * with *why saying why as the done callback would (a static string): nothing is left running. */
int http_pass_start(http_conn_t *c, uint32_t gen, const http_pass_req_t *r, const char *body, size_t body_len,
                    const http_pass_upstream_t *up, void *arg, const char **why);
/* Hooks from the HTTP server's callbacks (bind_http.c): 1 when a pass owns the connection's event. */
int http_pass_on_drain(http_conn_t *c);
int http_pass_on_body(http_conn_t *c);
void http_pass_on_conn_closed(http_conn_t *c);
/* The worker drains: every tunnel is closed, and an upstream's 101 from now on ends its exchange with
 * the error "draining" (no new tunnel). */
void http_pass_drain(void);

#endif
