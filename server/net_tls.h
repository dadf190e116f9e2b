/* net_tls.h -- TLS for outbound sockets: OpenSSL over memory buffers, driven by net_tcp.c. */
#ifndef MOONFORK_NET_TLS_H
#define MOONFORK_NET_TLS_H

#include <uv.h>

typedef struct net_tls_s net_tls_t;
/* A session to resume: shared by its connection and whoever asked for it, counted. */
typedef struct net_tls_session_s net_tls_session_t;

/* How a TLS session reaches its socket. send_raw writes ciphertext (0, 1 when queued, or a negative
 * UV_E* code); on_plain gets decrypted data (n > 0), or n < 0: UV_EOF (the peer's close_notify) or
 * UV_EPROTO; on_handshake gets NULL when the handshake is done, else why it failed. */
typedef struct {
  int (*send_raw)(void *owner, const char *p, size_t n);
  void (*on_plain)(void *owner, const char *p, ssize_t n);
  void (*on_handshake)(void *owner, const char *err);
} net_tls_io_t;

/* A client session: SNI `server_name` (may be NULL); with `verify`, the peer's chain is checked
 * against the system's CA store (or $SSL_CERT_FILE / $SSL_CERT_DIR) and its name against server_name.
 * With `reuse` (may be NULL or empty), its session is offered to the server.
 * The first call loads OpenSSL (libssl.so.3). NULL when OpenSSL could not be loaded (net_tls_error
 * says why) or could not make one. The caller frees it with net_tls_free. */
net_tls_t *net_tls_new(const char *server_name, int verify, net_tls_session_t *reuse, const net_tls_io_t *io,
                       void *owner);
/* t's session box, a new reference (filled in when the server sends a session; it may come after
 * the handshake, with TLS 1.3). Give it back with net_tls_session_unref. */
net_tls_session_t *net_tls_session(net_tls_t *t);
void net_tls_session_unref(net_tls_session_t *box);
/* 1 when the handshake is done and resumed a session. */
int net_tls_reused(net_tls_t *t);
/* NULL, or why OpenSSL could not be loaded: "TLS unavailable: ...". */
const char *net_tls_error(void);
/* Sends the ClientHello. 0 or a negative UV_E* code. */
int net_tls_start(net_tls_t *t);
/* Ciphertext from the socket: moves the handshake on, or hands plaintext to on_plain. */
void net_tls_feed(net_tls_t *t, const char *p, size_t n);
/* Encrypts and sends bufs: as send_raw (1 when some is queued). */
int net_tls_write(net_tls_t *t, const uv_buf_t *bufs, unsigned n);
/* Before closing the socket: a close_notify for the peer, best effort (queued, not waited for).
 * OpenSSL also keeps a session resumable only after a clean shutdown. Nothing after a fatal error. */
void net_tls_close_notify(net_tls_t *t);
void net_tls_free(net_tls_t *t);

#endif
