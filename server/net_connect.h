/* net_connect.h -- an outbound libuv stream, TCP or Unix-domain: set up, connect, read into one buffer. */
#ifndef MOONFORK_NET_CONNECT_H
#define MOONFORK_NET_CONNECT_H

#include <uv.h>

/* The stream, embedded in its owner: one handle seen as any of its types. */
typedef union {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
} net_connect_stream_t;

/* Sets s up as a Unix-domain stream (is_unix) or a TCP one, with data as its handle's data. 0 or a
 * negative UV_E* code (then s needs no close). */
int net_connect_init(uv_loop_t *loop, net_connect_stream_t *s, int is_unix, void *data);
/* Starts connecting s to addr (TCP), or to path when addr is NULL (Unix); req->data is set to data and
 * cb follows, unless a TCP connect fails at once: then a negative UV_E* code and no callback (a Unix
 * one always reports through cb). 0 otherwise. */
int net_connect_start(net_connect_stream_t *s, uv_connect_t *req, const struct sockaddr *addr, const char *path,
                      uv_connect_cb cb, void *data);
/* What every owner does once connected: Nagle off on TCP (requests go out whole, not held back). */
void net_connect_ready(net_connect_stream_t *s);
/* Starts reading into the worker's one read buffer, shared by every outbound stream: cb must be done
 * with the bytes before it returns (libuv reads one stream at a time). Already reading is not an
 * error. 0 or a negative UV_E* code. */
int net_connect_read(net_connect_stream_t *s, uv_read_cb cb);

#endif
