/* http_internal.h -- what the http_*.c files share: the server and connection structs, their links. */
#ifndef MOONFORK_HTTP_INTERNAL_H
#define MOONFORK_HTTP_INTERNAL_H

#include <time.h>

#include "http.h"
#include "http_parse.h"
#include "util.h"
#include "writeq.h"

#define HTTP_READ_BUF (64 * 1024)
#define HTTP_HIGH_WATER (256 * 1024) /* send queue above which respond() says "slow down" */
#define HTTP_KEEP_BUF 4096           /* buffers above this are given back between requests */
/* Send queue a response may not grow past: a handler that ignores write()'s "slow down" and keeps
 * writing finds its connection closed once this much waits (as the mesh's MESH_HARD_LIMIT). */
#define HTTP_HARD_LIMIT (64u * 1024 * 1024)
/* A body the handler reads while it arrives (req:read()): reading stops while this much waits unread. */
#define HTTP_BODY_UNREAD (64 * 1024)
/* A body the handler left unread when its response finished: dropped up to this much, as nginx does
 * (the connection stays for the next request); a longer one closes the connection instead. */
#define HTTP_DISCARD_MAX (1024 * 1024)

/* What a handler does with a body still arriving when it started (http_body.c). */
enum http_body_mode {
  HTTP_BODY_UNDECIDED, /* it has not asked yet: up to HTTP_BODY_UNREAD is kept */
  HTTP_BODY_STREAM,    /* req:read(): pieces, each dropped once read */
  HTTP_BODY_WHOLE,     /* req.body: kept whole until complete */
  HTTP_BODY_DISCARD,   /* its response is finished: the rest is read and dropped */
};

enum http_conn_state {
  HTTP_CONN_IDLE,     /* between requests: waiting for the first byte */
  HTTP_CONN_HEAD,     /* receiving the request line and headers */
  HTTP_CONN_BODY,     /* receiving the body (or dropping one its finished response left unread) */
  HTTP_CONN_HANDLING, /* the handler has the request; its response is not finished */
  HTTP_CONN_CLOSING,  /* our response is out, FIN sent: discarding input until the client closes */
  HTTP_CONN_TAKEN,    /* handed over to another protocol (http_conn_takeover) */
};

/* What a connection needs only while a request is being read, its body streamed, input held or its
 * end written: taken from the server's pool when bytes arrive and given back once the connection
 * waits with nothing of its own (idle keep-alive, or a response held open: SSE), so that a waiting
 * connection costs only its http_conn_t (see "memory" in http_conn.c). */
typedef struct http_rq_s http_rq_t;
struct http_rq_s {
  http_parse_t parser;
  mf_buf_t body;
  mf_buf_t pending;          /* input received while a request is being handled */
  mf_buf_t alog;             /* access log: "request line" then '\0' then referer '\0' user agent */
  uint64_t discarded;        /* bytes dropped in HTTP_BODY_DISCARD */
  uint64_t body_until;       /* loop time the request body must have arrived by (--body-timeout), 0 = none */
  uint64_t body_counted;     /* bytes of srv->body_bytes that are this connection's body */
  int body_err;              /* why the streamed body failed (UV_ETIMEDOUT, UV_EMSGSIZE, ...), 0 = it did not */
  uv_shutdown_t shutdown_req;
  uint32_t body_gen;         /* the request (gen) whose body is streamed (body_streamed) */
  http_takeover_cb takeover_cb; /* state HTTP_CONN_TAKEN: who gets the socket once the 101 is out */
  void *takeover_arg;
  http_rq_t *next_free;      /* in the server's pool */
};

/* The send queue and the send timeout's progress, made only while bytes wait to go out (a waiting
 * connection has nothing queued): 72 bytes less in every http_conn_t. */
typedef struct {
  writeq_t wq;
  uint64_t sent_seen;        /* writeq_sent at the last check */
  uint64_t sent_at;          /* loop time it was last seen to grow */
  uint64_t send_check;       /* loop time of the next check that the client reads, 0 = none yet */
} http_send_t;

struct http_conn_s {
  uv_tcp_t tcp;
  writeq_t *wq;              /* in an http_send_t; NULL while nothing is queued */
  http_rq_t *rq;             /* NULL while the connection waits with nothing of its own */
  http_server_t *srv;
  http_conn_t *prev, *next;  /* the server's list of connections */
  http_conn_t *resume_next;  /* the server's list of connections whose pipelined input waits */
  uint8_t state;             /* enum http_conn_state */
  unsigned closing : 1;      /* uv_close called */
  unsigned in_process : 1;   /* inside conn_process: it will pick up the next request itself */
  unsigned queued : 1;       /* on the resume list */
  unsigned read_paused : 1;  /* stopped reading: too much pipelined input waits */
  unsigned head_sent : 1;
  unsigned chunked : 1;
  unsigned keep_alive : 1;
  unsigned client_close : 1; /* the client itself asked to close after this request */
  unsigned is_head : 1;
  unsigned http11 : 1;
  unsigned upgrade : 1;
  unsigned lua_owned : 1;    /* a handler has the current request: tell it when the connection goes */
  unsigned nodelay : 1;      /* TCP_NODELAY is set */
  unsigned clen_over : 1;    /* the handler wrote past its Content-Length (logged once) */
  unsigned body_streamed : 1; /* the request went to the handler before its body was complete */
  unsigned body_open : 1;    /* ...and the body is still arriving */
  unsigned body_end : 1;     /* ...and it has all arrived (what is unread waits in `body`) */
  unsigned body_waiting : 1; /* the handler waits for more of it: tell it (on_body) */
  unsigned body_mode : 2;    /* enum http_body_mode */
  unsigned in_chan : 1;      /* its response is a member of a channel (http_chan.c) */
  uint32_t gen;
  int user_ref;
  /* one word: 1 + index in the server's timer heap (0 = not in it; --max-connections is at most 10^6,
   * under 2^22), and the response's status for the access log. With the send check in http_send_t and
   * body_gen in the request state, http_conn_t is 344 bytes: a 352-byte malloc chunk, not 368 */
  unsigned heap_pos : 22;
  unsigned status : 10;
  uint64_t bytes_out;        /* body bytes of the response */
  uint64_t deadline;         /* loop time (ms) the current timeout ends, 0 = none (see http_conn_timer) */
  uint64_t timer_due;        /* when the heap has it due (the sooner of the deadline and the send check) */
  int64_t clen_left;         /* body bytes the handler's Content-Length still allows, -1 = none set */
};

struct http_server_s {
  uv_loop_t *loop;
  uv_poll_t listener;        /* the shared listening socket; we accept ourselves (see on_listener) */
  uv_timer_t accept_retry;   /* after EMFILE and the like */
  int listen_fd;
  uv_idle_t idle;
  uv_timer_t timer;          /* fires for the first connection due in the heap */
  uint64_t timer_at;         /* when it is set to fire, 0 = not set */
  http_conn_t **heap;        /* connections with a timeout, a binary min-heap on timer_due */
  uint32_t heap_len, heap_cap;
  http_rq_t *rq_free;        /* request states given back, for the next request */
  uint32_t rq_free_len;
  const mf_config_t *cfg;
  http_callbacks_t cb;
  void *data;
  http_conn_t *conns;
  http_conn_t *resume_head;
  size_t nconns;             /* HTTP connections in `conns` (with the WebSockets: server_count) */
  size_t nconns_peak;        /* the most open at once (WebSockets too) since http_server_take_conn_peak */
  size_t crowd_mark;         /* the most open at once since memory was last trimmed (server_trim) */
  uint64_t requests;
  uint64_t request_limit;    /* on_limit fires when requests reaches it (0 = never) */
  uint64_t body_bytes;       /* request bodies being received, counted against --max-body-memory */
  uint64_t body_refused_at;  /* loop time a body was last refused for it (the log says so once a second) */
  int listener_closed, accept_paused, draining, drained_fired;
  int crowd_left;            /* a crowd is leaving: memory is trimmed as it goes (server_trim) */

  mf_buf_t out;              /* response head being assembled (reused) */
  scoreboard_entry_t *sb;       /* where the master sees what this worker runs (may be NULL) */
  scoreboard_board_t *board;         /* every worker's entry (may be NULL) */
  int sb_index;
  int access_fd;
  mf_buf_t access;           /* access log lines, written once per loop turn */
  uv_prepare_t flush;
  time_t alog_at;
  char alog_time[40];
  time_t date_at;
  char date[48];             /* "Date: ...\r\n" for date_at */
  size_t date_len;
  char readbuf[HTTP_READ_BUF];
};

/* http_server.c */
http_rq_t *http_server_rq_get(http_server_t *srv);             /* NULL when out of memory */
void http_server_rq_put(http_server_t *srv, http_rq_t *rq);
void http_server_conn_added(http_server_t *srv, http_conn_t *c);
void http_server_conn_removed(http_server_t *srv, http_conn_t *c); /* before it is freed */
void http_server_conn_gone(http_server_t *srv);                     /* after */
void http_server_count_response(http_server_t *srv);

/* http_conn.c */
void http_conn_new(http_server_t *srv, int fd);
void http_conn_close(http_conn_t *c);
void http_conn_end(http_conn_t *c);
void http_conn_timer(http_conn_t *c, uint64_t ms);
int http_conn_write(http_conn_t *c, uv_buf_t *bufs, unsigned n);
void http_conn_request_done(http_conn_t *c);
void http_conn_next(http_conn_t *c);       /* ready for the next request on a kept-alive connection */
void http_conn_read_again(http_conn_t *c); /* reads on after read_paused */
http_rq_t *http_conn_rq(http_conn_t *c);   /* the connection's request state, taken if it had none (NULL: no memory) */
/* Loop time of the next check that the client reads what is queued, 0 = nothing queued. */
static inline uint64_t http_conn_send_check(const http_conn_t *c) {
  return c->wq != NULL ? mf_container_of(c->wq, http_send_t, wq)->send_check : 0;
}
/* Bytes waiting to be written. */
static inline size_t http_conn_queued(const http_conn_t *c) {
  return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

/* http_timer.c */
void http_server_heap_set(http_server_t *srv, http_conn_t *c); /* (re)places c at c->timer_due */
void http_server_heap_remove(http_server_t *srv, http_conn_t *c);
void http_conn_send_watch(http_conn_t *c); /* bytes were left queued: the send timeout starts */

/* http_body.c */
int http_body_count(http_conn_t *c, uint64_t n);
void http_body_release(http_conn_t *c);
void http_body_timer(http_conn_t *c);
int http_body_piece(http_conn_t *c, const char *at, size_t len);
void http_body_fed(http_conn_t *c);
void http_body_fail(http_conn_t *c, int status);
void http_body_tell(http_conn_t *c);
int http_body_complete(http_conn_t *c);
int http_body_done(http_conn_t *c);

/* http_respond.c */

/* What a response head is built from. */
typedef struct {
  int status;
  int http11;            /* the request was HTTP/1.1 (or later) */
  int keep_alive;        /* the connection may stay open (request, handler and server agree) */
  int final;             /* the whole body comes with the head */
  int64_t clen;          /* the Content-Length among the handler's lines, or -1 */
  size_t body_len;       /* this call's body */
  const char *lines;     /* the handler's header lines, "Name: value\r\n" each */
  size_t lines_len;
  const char *date;      /* "Date: ...\r\n" */
  size_t date_len;
} http_head_t;

#define HTTP_HEAD_CHUNKED 1    /* the body goes in chunks */
#define HTTP_HEAD_KEEP_ALIVE 2 /* the connection stays open after the response */

/* Appends the head (status line to the blank line) to out; returns HTTP_HEAD_* flags. */
unsigned http_respond_head(mf_buf_t *out, const http_head_t *h);
/* Appends the chunk-size line for a chunk of len bytes (len > 0). */
void http_respond_chunk_size(mf_buf_t *out, size_t len);
void http_conn_fail(http_conn_t *c, int status);

/* http_alog.c */
void http_alog_request(http_conn_t *c, const char *method);
void http_alog_response(http_conn_t *c);
void http_alog_flush(http_server_t *srv);

#endif
