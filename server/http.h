/* http.h -- HTTP/1.1 in a worker: the server (http_server.c), its connections (http_conn.c), responses
 * (http_respond.c) and the access log (http_alog.c). The parser is http_parse.h. */
#ifndef MOONFORK_HTTP_H
#define MOONFORK_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "scoreboard.h"

typedef struct http_server_s http_server_t;
typedef struct http_conn_s http_conn_t;

/* One parsed request, as handed to the request handler. Every pointer is valid only during that call. */
typedef struct {
  const char *method;
  const char *url;
  size_t url_len;
  int http_major, http_minor;
  /* The headers in arrival order, packed as the parser stored them (see http_parse.h: per header two
   * native uint32 lengths, the name, the value); http_headers_next walks them. */
  const char *headers;
  size_t headers_len;
  /* The trailer fields after a chunked body, packed the same way; never merged into the headers. */
  const char *trailers;
  size_t trailers_len;
  /* The whole body; NULL when it is still arriving (the request went to the handler at the end of its
   * head: the handler reads the body with http_conn_body_read). */
  const char *body;
  size_t body_len;
} http_request_t;

/* What the server calls; `data` is the pointer given to http_server_new. */

typedef struct {
  /* A request is complete; the handler answers later through http_conn_respond with this gen. Returns 0,
   * or -1 when it could not even start (the server then answers 500). */
  int (*on_request)(void *data, http_conn_t *conn, uint32_t gen, const http_request_t *req);
  /* The connection is gone (called once, only for connections that carried a request); in_flight: a
   * request on it had not finished its response. */
  void (*on_conn_closed)(void *data, http_conn_t *conn, int in_flight);
  /* A response that was told to slow down (respond returned 0) may write again. */
  void (*on_drain)(void *data, http_conn_t *conn);
  /* Draining finished: no connection is left. */
  void (*on_drained)(void *data);
  /* The response count reached the limit set with http_server_set_request_limit (may be NULL). */
  void (*on_limit)(void *data, uint64_t requests);
  /* A body still arriving (req->body NULL) has news for a handler that waits in http_conn_body_read:
   * a piece, an error, or its end (end = 1, with the trailer fields packed as the headers are, valid
   * during the call). Also called at the end when there are trailers. May be NULL. */
  void (*on_body)(void *data, http_conn_t *conn, int end, const char *trailers, size_t trailers_len);
} http_callbacks_t;

/* Creates a server that will accept on the listening socket `fd` (already bound and listening).
 * Returns NULL with a reason in err on failure. The caller owns the result until exit. */
http_server_t *http_server_new(uv_loop_t *loop, const mf_config_t *cfg, int fd, const http_callbacks_t *cb,
                               void *data, char *err, size_t errlen);
/* Starts accepting. 0 or a negative UV_E* code. */
int http_server_start(http_server_t *srv);
/* Serves connection `fd` as if this server had accepted it (the master hands on, see reuseport.c). */
void http_server_adopt(http_server_t *srv, int fd);
/* Stops accepting and lets in-flight requests finish with "Connection: close"; on_drained fires once
 * no connection is left. close_idle: close idle keep-alive connections now (a shutdown); otherwise
 * (a reload) each is closed after its next request or when its keep-alive timeout ends, so a client
 * that sends just as the drain begins is still answered. Calling again with close_idle = 1 upgrades. */
void http_server_drain(http_server_t *srv, int close_idle);
/* This worker's entry `index` in the shared scoreboard: where each dispatch and the connection count
 * are recorded, and whose other entries balance accepting between workers. */
void http_server_set_scoreboard(http_server_t *srv, scoreboard_board_t *board, int index);
/* Marks the server draining without closing anything yet: responses from now on say "Connection:
 * close". (A drain hook can then answer long polls before http_server_drain ends the wait.) */
void http_server_set_draining(http_server_t *srv);
/* Appends a combined-format line per response to fd (-1: none, after writing out what is buffered).
 * The fd is the caller's. */
void http_server_set_access_log(http_server_t *srv, int fd);
/* Open connections: HTTP's and those taken over from them, WebSockets and proxied tunnels (what
 * --max-connections bounds). */
size_t http_server_conn_count(const http_server_t *srv);
/* A connection taken over from HTTP (a WebSocket, a tunnel through moonfork.http.pass) still counts
 * against --max-connections, in the accept balance and in the status until it closes, as nginx's
 * worker_connections counts every connection: whoever takes a socket calls http_taken(1), and
 * http_taken(-1) once it has closed it (the worker's server may then accept again). */
void http_taken(int delta);
uint64_t http_server_requests(const http_server_t *srv);
/* Calls on_limit when the response count reaches n (0: never). */
void http_server_set_request_limit(http_server_t *srv, uint64_t n);
/* The most connections open at once since the last call (a crowd seen between two samples counts). */
size_t http_server_take_conn_peak(http_server_t *srv);

/* What the core makes of a response header the handler set (name: a token, any case). Which header
 * wins is decided in C only, in http_respond.c: the handler's lines come first and the core adds the
 * framing (Content-Length, chunked, Connection) that they leave to it. */
enum {
  HTTP_HEADER_OWN,        /* written as given */
  HTTP_HEADER_FRAMING,    /* Transfer-Encoding: dropped, the core frames the body itself */
  HTTP_HEADER_CONNECTION, /* dropped: the core says keep-alive or close ("close" asks for it) */
  HTTP_HEADER_LENGTH,     /* Content-Length: written, and the core adds no framing of its own */
};
int http_respond_header_role(const char *name, size_t len);

/* Flags for http_conn_respond. */
#define HTTP_RESP_CLOSE 1 /* the handler asked for "Connection: close" */

/* Writes part or all of the response to request `gen`. `head` holds the handler's header lines
 * ("Name: value\r\n" each), used on the first call only; `clen` is the Content-Length the handler set, or -1:
 * the body is held to it (bytes past it are dropped, a body that ends short closes the connection after
 * it; both logged). The bytes are copied or written before it returns. Returns 1 when written, 0 when
 * written but the connection's send queue is over its high-water mark (on_drain follows), UV_EPIPE when
 * the request is gone (client closed, timed out, or a write found 64 MiB queued: the connection closed). */
int http_conn_respond(http_conn_t *c, uint32_t gen, int status, const char *head, size_t head_len,
                      const char *body, size_t body_len, int final, int64_t clen, int flags);
/* Drops the connection of request `gen` (a handler failed after its headers went out). */
void http_conn_abort(http_conn_t *c, uint32_t gen);
/* Called once a taken-over connection's 101 response is out: fd is the socket (the callee's to close),
 * or a negative UV_E* code; rest holds the bytes read past the request (valid during the call). */
typedef void (*http_takeover_cb)(void *arg, int fd, const char *rest, size_t rest_len);
/* Takes the connection of request `gen` away from HTTP after an Upgrade: the handler has written its
 * 101 head (not final), and once everything written has gone out, cb gets the socket and the HTTP
 * side closes (on_conn_closed says not in flight). Without a takeover an upgrade is answered and the
 * connection closed. Returns 0, UV_EPIPE when the request is gone, UV_EINVAL when it asked for no
 * upgrade or no head was written. */
int http_conn_takeover(http_conn_t *c, uint32_t gen, http_takeover_cb cb, void *arg);
/* What http_conn_body_read returns (or a negative UV_E* code: UV_EPIPE the request is gone,
 * UV_ETIMEDOUT the body did not arrive in time, UV_EMSGSIZE it is over --max-body, another: the
 * client sent something unusable and was answered with an error). */
#define HTTP_BODY_END 0   /* the body has all been read */
#define HTTP_BODY_PIECE 1 /* *data, *len: the next piece (whole: the whole body); http_conn_body_taken next */
#define HTTP_BODY_WAIT 2  /* nothing yet: on_body will say when to ask again */
/* Reads the body of request `gen` while it arrives (req->body was NULL). whole = 0: the next piece;
 * whole = 1: the whole body once complete. The first call chooses; a piece is dropped once taken, so
 * a streamed body never sits whole in memory (reading stops while HTTP_BODY_UNREAD waits unread). */
int http_conn_body_read(http_conn_t *c, uint32_t gen, int whole, const char **data, size_t *len);
/* The piece http_conn_body_read gave is copied: its bytes may go. */
void http_conn_body_taken(http_conn_t *c);
/* The connection's slot for its owner's use (the Lua binding keeps a registry ref there). */
int *http_conn_user_ref(http_conn_t *c);
/* The generation number of the connection's current request. */
uint32_t http_conn_gen(const http_conn_t *c);
/* The peer's address ("127.0.0.1"), looked up each call, in a buffer valid until the next call. */
const char *http_conn_remote(http_conn_t *c);

#endif
