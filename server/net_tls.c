/* net_tls.c -- TLS for outbound sockets: OpenSSL over memory buffers, driven by net_tcp.c.
 *
 * OpenSSL never touches the socket: ciphertext read by libuv is written into the session's input
 * BIO, and what OpenSSL wants sent is taken from its output BIO and written through the socket's
 * send queue. So TLS adds no second event loop and no blocking call, and net_tcp.c stays one stream.
 * One SSL_CTX per worker (made on first use) holds the system's CA store.
 *
 * OpenSSL is loaded lazily: the binary does not link it, and the first net_tls_new dlopens
 * libssl.so.3 (which brings libcrypto) and resolves what this file calls into the table `ossl`.
 * Linked, OpenSSL cost every worker about 1.9 MB of RSS at start, TLS used or not. The headers
 * still give the types, constants and prototypes; a header macro (SSL_set_tlsext_host_name, ...)
 * is written out as the call it stands for (SSL_ctrl, ...). When loading fails, TLS is unavailable
 * and net_tls_error says why.
 *
 * Session reuse: every session has a box (net_tls_session_t, counted references) that its connection
 * and any Lua session object share. OpenSSL's new-session callback fills the box; with TLS 1.3 the
 * ticket comes after the handshake, so a box handed out at the end of the handshake is filled in
 * when the first records are read. A new connection given a box offers the session it holds. */
#include "net_tls.h"

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>

/* Every OpenSSL function this file calls, one X(name) each; the prototype comes from the header. */
#define NET_TLS_FUNCTIONS(X)                                                                    \
  X(TLS_client_method) X(SSL_CTX_new) X(SSL_CTX_ctrl) X(SSL_CTX_set_default_verify_paths)       \
  X(SSL_new) X(SSL_free) X(SSL_ctrl) X(SSL_set_bio) X(SSL_set_connect_state) X(SSL_set1_host)   \
  X(SSL_set_verify) X(SSL_do_handshake) X(SSL_get_error) X(SSL_get_verify_result) X(SSL_read)   \
  X(SSL_write) X(BIO_s_mem) X(BIO_new) X(BIO_free) X(BIO_read) X(BIO_write) X(ERR_get_error)    \
  X(ERR_clear_error) X(ERR_reason_error_string) X(X509_verify_cert_error_string)                \
  X(SSL_CTX_sess_set_new_cb) X(SSL_set_ex_data) X(SSL_get_ex_data) X(SSL_set_session)            \
  X(SSL_SESSION_free) X(SSL_session_reused) X(SSL_shutdown)

#define NET_TLS_FIELD(name) __typeof__(&name) name;
static struct {
  NET_TLS_FUNCTIONS(NET_TLS_FIELD)
} ossl;
#undef NET_TLS_FIELD

static int net_tls_loaded; /* 0: not tried yet, 1: ossl is filled in, -1: failed (net_tls_err) */
static char net_tls_err[256];

/* Loads OpenSSL, once per process: 0, or -1 with net_tls_err set (and not tried again). */
static int net_tls_load(void) {
  if (net_tls_loaded) return net_tls_loaded > 0 ? 0 : -1;
  net_tls_loaded = -1;
  void *lib = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    snprintf(net_tls_err, sizeof net_tls_err, "TLS unavailable: %s", dlerror());
    return -1;
  }
  void *f;
#define NET_TLS_RESOLVE(name)                                                                   \
  if ((f = dlsym(lib, #name)) == NULL) {                                                        \
    snprintf(net_tls_err, sizeof net_tls_err, "TLS unavailable: libssl.so.3 has no %s", #name); \
    dlclose(lib);                                                                               \
    return -1;                                                                                  \
  }                                                                                             \
  *(void **)&ossl.name = f;
  NET_TLS_FUNCTIONS(NET_TLS_RESOLVE)
#undef NET_TLS_RESOLVE
  net_tls_loaded = 1;
  return 0;
}

const char *net_tls_error(void) { return net_tls_loaded < 0 ? net_tls_err : NULL; }

struct net_tls_session_s {
  SSL_SESSION *sess; /* NULL until the server has given one */
  int refs;
};

struct net_tls_s {
  SSL *ssl;
  net_tls_session_t *box; /* this connection's session, for resuming later ones */
  BIO *in, *out; /* owned by ssl */
  const net_tls_io_t *io;
  void *owner;
  int done;   /* the handshake is over */
  int failed; /* a fatal error: no close_notify, and the session is not to be resumed */
};

static SSL_CTX *net_tls_ctx;

void net_tls_session_unref(net_tls_session_t *box) {
  if (box == NULL || --box->refs > 0) return;
  if (box->sess) ossl.SSL_SESSION_free(box->sess);
  free(box);
}

/* OpenSSL has a session (a ticket) for ssl: it goes into the connection's box, replacing the last. */
static int net_tls_new_session(SSL *ssl, SSL_SESSION *sess) {
  net_tls_t *t = ossl.SSL_get_ex_data(ssl, 0);
  if (t == NULL || t->box == NULL) return 0;
  if (t->box->sess) ossl.SSL_SESSION_free(t->box->sess);
  t->box->sess = sess;
  return 1; /* the reference is ours */
}

static SSL_CTX *net_tls_context(void) {
  if (net_tls_ctx) return net_tls_ctx;
  net_tls_ctx = ossl.SSL_CTX_new(ossl.TLS_client_method());
  if (net_tls_ctx == NULL) return NULL;
  /* SSL_CTX_set_min_proto_version */
  ossl.SSL_CTX_ctrl(net_tls_ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL);
  /* SSL_CTX_set_session_cache_mode: the callback sees each session; OpenSSL keeps none itself */
  ossl.SSL_CTX_ctrl(net_tls_ctx, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE,
                    NULL);
  ossl.SSL_CTX_sess_set_new_cb(net_tls_ctx, net_tls_new_session);
  ossl.SSL_CTX_set_default_verify_paths(net_tls_ctx);
  return net_tls_ctx;
}

net_tls_t *net_tls_new(const char *server_name, int verify, net_tls_session_t *reuse, const net_tls_io_t *io,
                       void *owner) {
  if (net_tls_load() != 0) return NULL;
  SSL_CTX *ctx = net_tls_context();
  if (ctx == NULL) return NULL;
  net_tls_t *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->ssl = ossl.SSL_new(ctx);
  t->in = ossl.BIO_new(ossl.BIO_s_mem());
  t->out = ossl.BIO_new(ossl.BIO_s_mem());
  t->box = calloc(1, sizeof *t->box);
  if (t->ssl == NULL || t->in == NULL || t->out == NULL || t->box == NULL) goto fail_ssl;
  t->box->refs = 1;
  ossl.SSL_set_ex_data(t->ssl, 0, t);
  if (reuse && reuse->sess) ossl.SSL_set_session(t->ssl, reuse->sess); /* offered; the server may refuse */
  ossl.SSL_set_bio(t->ssl, t->in, t->out);
  ossl.SSL_set_connect_state(t->ssl);
  if (server_name && *server_name) {
    /* SSL_set_tlsext_host_name */
    ossl.SSL_ctrl(t->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, (void *)server_name);
    if (verify) ossl.SSL_set1_host(t->ssl, server_name);
  }
  ossl.SSL_set_verify(t->ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  t->io = io;
  t->owner = owner;
  return t;
fail_ssl:
  if (t->ssl) {
    ossl.SSL_free(t->ssl);
  } else {
    ossl.BIO_free(t->in);
    ossl.BIO_free(t->out);
  }
  free(t->box);
  free(t);
  return NULL;
}

/* Sends what OpenSSL has written into the output BIO. As send_raw. */
static int net_tls_flush(net_tls_t *t) {
  char buf[16384];
  int queued = 0, n;
  while ((n = ossl.BIO_read(t->out, buf, sizeof buf)) > 0) {
    int r = t->io->send_raw(t->owner, buf, (size_t)n);
    if (r < 0) return r;
    if (r == 1) queued = 1;
  }
  return queued;
}

/* Why the handshake failed, in words: the verification result when that is what failed. */
static void net_tls_reason(net_tls_t *t, char *err, size_t len) {
  long v = ossl.SSL_get_verify_result(t->ssl);
  if (v != X509_V_OK) {
    snprintf(err, len, "certificate verify failed: %s", ossl.X509_verify_cert_error_string(v));
    return;
  }
  unsigned long e = ossl.ERR_get_error();
  snprintf(err, len, "handshake failed: %s", e ? ossl.ERR_reason_error_string(e) : "the peer broke it off");
}

static int net_tls_handshake(net_tls_t *t) {
  ossl.ERR_clear_error();
  int r = ossl.SSL_do_handshake(t->ssl);
  int w = net_tls_flush(t);
  if (r == 1) {
    t->done = 1;
    t->io->on_handshake(t->owner, NULL);
    return 0;
  }
  int e = ossl.SSL_get_error(t->ssl, r);
  if (w >= 0 && (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)) return 1;
  char err[256];
  t->failed = 1;
  net_tls_reason(t, err, sizeof err);
  t->io->on_handshake(t->owner, err);
  return -1;
}

int net_tls_start(net_tls_t *t) { return net_tls_handshake(t) < 0 ? UV_EPROTO : 0; }

void net_tls_feed(net_tls_t *t, const char *p, size_t n) {
  ossl.BIO_write(t->in, p, (int)n);
  if (!t->done && net_tls_handshake(t) != 0) return;
  char buf[16384];
  for (;;) {
    ossl.ERR_clear_error();
    int r = ossl.SSL_read(t->ssl, buf, sizeof buf);
    if (r > 0) {
      t->io->on_plain(t->owner, buf, r);
      continue;
    }
    int e = ossl.SSL_get_error(t->ssl, r);
    net_tls_flush(t);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
    if (e != SSL_ERROR_ZERO_RETURN) t->failed = 1;
    t->io->on_plain(t->owner, NULL, e == SSL_ERROR_ZERO_RETURN ? UV_EOF : UV_EPROTO);
    return;
  }
}

int net_tls_write(net_tls_t *t, const uv_buf_t *bufs, unsigned n) {
  if (!t->done) return UV_ENOTCONN;
  for (unsigned i = 0; i < n; i++) {
    if (bufs[i].len == 0) continue;
    ossl.ERR_clear_error();
    if (ossl.SSL_write(t->ssl, bufs[i].base, (int)bufs[i].len) <= 0) {
      t->failed = 1;
      return UV_EPROTO;
    }
  }
  return net_tls_flush(t);
}

net_tls_session_t *net_tls_session(net_tls_t *t) {
  t->box->refs++;
  return t->box;
}

int net_tls_reused(net_tls_t *t) { return t->done && ossl.SSL_session_reused(t->ssl); }

void net_tls_close_notify(net_tls_t *t) {
  if (!t->done || t->failed) return;
  ossl.ERR_clear_error();
  ossl.SSL_shutdown(t->ssl);
  net_tls_flush(t);
}

void net_tls_free(net_tls_t *t) {
  if (t == NULL) return;
  ossl.SSL_set_ex_data(t->ssl, 0, NULL);
  ossl.SSL_free(t->ssl);
  net_tls_session_unref(t->box);
  free(t);
}
