/* net_tls.c -- TLS for outbound sockets: OpenSSL over memory buffers, driven by net_tcp.c.
 *
 * OpenSSL never touches the socket: ciphertext read by libuv is written into the session's input
 * BIO, and what OpenSSL wants sent is taken from its output BIO and written through the socket's
 * send queue. So TLS adds no second event loop and no blocking call, and net_tcp.c stays one stream.
 * One SSL_CTX per worker (made on first use) holds the system's CA store. */
#include "net_tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>

struct net_tls_s {
  SSL *ssl;
  BIO *in, *out; /* owned by ssl */
  const net_tls_io_t *io;
  void *owner;
  int done; /* the handshake is over */
};

static SSL_CTX *net_tls_ctx;

static SSL_CTX *net_tls_context(void) {
  if (net_tls_ctx) return net_tls_ctx;
  net_tls_ctx = SSL_CTX_new(TLS_client_method());
  if (net_tls_ctx == NULL) return NULL;
  SSL_CTX_set_min_proto_version(net_tls_ctx, TLS1_2_VERSION);
  SSL_CTX_set_default_verify_paths(net_tls_ctx);
  return net_tls_ctx;
}

net_tls_t *net_tls_new(const char *server_name, int verify, const net_tls_io_t *io, void *owner) {
  SSL_CTX *ctx = net_tls_context();
  if (ctx == NULL) return NULL;
  net_tls_t *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->ssl = SSL_new(ctx);
  t->in = BIO_new(BIO_s_mem());
  t->out = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->in == NULL || t->out == NULL) goto fail_ssl;
  SSL_set_bio(t->ssl, t->in, t->out);
  SSL_set_connect_state(t->ssl);
  if (server_name && *server_name) {
    SSL_set_tlsext_host_name(t->ssl, server_name);
    if (verify) SSL_set1_host(t->ssl, server_name);
  }
  SSL_set_verify(t->ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  t->io = io;
  t->owner = owner;
  return t;
fail_ssl:
  if (t->ssl) {
    SSL_free(t->ssl);
  } else {
    BIO_free(t->in);
    BIO_free(t->out);
  }
  free(t);
  return NULL;
}

/* Sends what OpenSSL has written into the output BIO. As send_raw. */
static int net_tls_flush(net_tls_t *t) {
  char buf[16384];
  int queued = 0, n;
  while ((n = BIO_read(t->out, buf, sizeof buf)) > 0) {
    int r = t->io->send_raw(t->owner, buf, (size_t)n);
    if (r < 0) return r;
    if (r == 1) queued = 1;
  }
  return queued;
}

/* Why the handshake failed, in words: the verification result when that is what failed. */
static void net_tls_reason(net_tls_t *t, char *err, size_t len) {
  long v = SSL_get_verify_result(t->ssl);
  if (v != X509_V_OK) {
    snprintf(err, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    return;
  }
  unsigned long e = ERR_get_error();
  snprintf(err, len, "handshake failed: %s", e ? ERR_reason_error_string(e) : "the peer broke it off");
}

static int net_tls_handshake(net_tls_t *t) {
  ERR_clear_error();
  int r = SSL_do_handshake(t->ssl);
  int w = net_tls_flush(t);
  if (r == 1) {
    t->done = 1;
    t->io->on_handshake(t->owner, NULL);
    return 0;
  }
  int e = SSL_get_error(t->ssl, r);
  if (w >= 0 && (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)) return 1;
  char err[256];
  net_tls_reason(t, err, sizeof err);
  t->io->on_handshake(t->owner, err);
  return -1;
}

int net_tls_start(net_tls_t *t) { return net_tls_handshake(t) < 0 ? UV_EPROTO : 0; }

void net_tls_feed(net_tls_t *t, const char *p, size_t n) {
  BIO_write(t->in, p, (int)n);
  if (!t->done && net_tls_handshake(t) != 0) return;
  char buf[16384];
  for (;;) {
    ERR_clear_error();
    int r = SSL_read(t->ssl, buf, sizeof buf);
    if (r > 0) {
      t->io->on_plain(t->owner, buf, r);
      continue;
    }
    int e = SSL_get_error(t->ssl, r);
    net_tls_flush(t);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
    t->io->on_plain(t->owner, NULL, e == SSL_ERROR_ZERO_RETURN ? UV_EOF : UV_EPROTO);
    return;
  }
}

int net_tls_write(net_tls_t *t, const uv_buf_t *bufs, unsigned n) {
  if (!t->done) return UV_ENOTCONN;
  for (unsigned i = 0; i < n; i++) {
    if (bufs[i].len == 0) continue;
    ERR_clear_error();
    if (SSL_write(t->ssl, bufs[i].base, (int)bufs[i].len) <= 0) return UV_EPROTO;
  }
  return net_tls_flush(t);
}

void net_tls_free(net_tls_t *t) {
  if (t == NULL) return;
  SSL_free(t->ssl);
  free(t);
}
