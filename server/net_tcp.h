/* net_tcp.h -- outbound stream sockets for scripts: resolve, connect, read, write, close. */
#ifndef MOONFORK_NET_TCP_H
#define MOONFORK_NET_TCP_H

#include <uv.h>

#include "net_tls.h"

typedef struct net_tcp_s net_tcp_t;

/* What a socket tells its owner. None of them runs after net_tcp_close. on_read gets n > 0 bytes, or
 * n < 0: UV_EOF (the peer closed) or another UV_E* code. on_sent runs when everything queued has gone
 * out (status 0) or a queued write failed (a UV_E* code). */
typedef struct {
  void (*on_connect)(net_tcp_t *s, int status);
  void (*on_read)(net_tcp_t *s, const char *data, ssize_t n);
  void (*on_sent)(net_tcp_t *s, int status);
  void (*on_handshake)(net_tcp_t *s, const char *err); /* err NULL: TLS is up */
} net_tcp_callbacks_t;

/* The worker's loop and callbacks, once, before any other call. */
void net_tcp_init(uv_loop_t *loop, const net_tcp_callbacks_t *cb);
/* A new socket (a TCP one, or a Unix-domain one when is_unix), not connected; NULL when out of memory.
 * The caller owns it until net_tcp_close, which frees it once libuv lets go. */
net_tcp_t *net_tcp_new(int is_unix);
/* Starts connecting to addr (TCP) or path (Unix); on_connect follows. 0 or a negative UV_E* code. */
int net_tcp_connect(net_tcp_t *s, const struct sockaddr *addr);
int net_tcp_connect_unix(net_tcp_t *s, const char *path);
/* Reading on or off; on_read runs for each piece while on. 0 or a negative UV_E* code. */
int net_tcp_read(net_tcp_t *s, int on);
/* Writes bufs (copied where the kernel does not take them at once): 0 when all went out now, 1 when a
 * part is queued (on_sent follows), or a negative UV_E* code. */
int net_tcp_write(net_tcp_t *s, const uv_buf_t *bufs, unsigned n);
/* 1 when the connection looks usable (nothing has arrived that says the peer closed or failed: a
 * look at the socket without reading, for a pooled connection about to be reused), else 0. */
int net_tcp_alive(net_tcp_t *s);
/* Starts TLS on a connected socket (net_tls.h: SNI server_name, verification); on_handshake follows,
 * then reads and writes carry plaintext. 0 or a negative UV_E* code. */
int net_tcp_tls(net_tcp_t *s, const char *server_name, int verify, net_tls_session_t *reuse);
/* Its TLS session state, NULL before net_tcp_tls. */
net_tls_t *net_tcp_tls_of(net_tcp_t *s);
/* Whether the socket keeps the loop alive (a pooled idle socket does not). */
void net_tcp_keep_loop(net_tcp_t *s, int on);
/* Closes the socket: no callback runs after this; the memory goes in libuv's close callback. */
void net_tcp_close(net_tcp_t *s);
/* The owner's slot (a binding's registry ref), LUA_NOREF-like -2 when unset. */
int *net_tcp_user_ref(net_tcp_t *s);

/* Resolves host (a name or a literal address, /etc/hosts first as getaddrinfo does) on libuv's thread
 * pool; cb gets 0 and the addresses (freed after cb returns), or a negative UV_E* code and NULL. */
typedef void (*net_tcp_resolve_cb)(void *data, int status, const struct addrinfo *ai);
int net_tcp_resolve(const char *host, net_tcp_resolve_cb cb, void *data);

#endif
