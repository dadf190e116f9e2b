/* bench/cross/xfanout.c: cross-host SSE fan-out load generator (one process, one thread, epoll), grown from
 * bench/chat/fanout.c for several hosts and for servers other than the chat.
 *
 * Opens C SSE clients (GET --sub-path, each on its own new TCP connection), client i to host i mod H of
 * --hosts, and waits until every one has its HTTP 200 headers. A publisher then POSTs --pub-path at a fixed
 * rate R for D seconds, message k to host k mod H (so most deliveries cross from one host to the other);
 * each text carries the run id, the message index k and its send time (CLOCK_REALTIME, ns); the body is the
 * chat's JSON {user,text} (--pub-format json) or the text alone (raw: nchan publishes the body as it is).
 * Any 2xx answer to a POST counts as published. Each client records, per message, two latencies:
 *   - arrival: the kernel's receive timestamp of the segment (SO_TIMESTAMPNS, stamped when loopback
 *     hands the segment to the client socket) minus the send time. It does not include the time this
 *     process takes to get round to the socket, so it measures the server, not the load generator.
 *   - read:    the time this process read it (clock_gettime after recvmsg) minus the send time.
 * Reports deliveries expected vs received, lost, duplicates, out-of-order (a message index k lower than
 * the previous one on the same stream: the publisher posts in k order, and "overlapping posts" counts
 * the posts sent while an earlier one was not answered yet, when that order is not the servers' order),
 * deliveries/s, latency percentiles (all, and "cross": deliveries on a host other than the one posted to),
 * and one line "RESULT {json}". A closed stream reconnects with Last-Event-ID (the last id: seen, as text).
 *
 * --proto sio: the clients are Socket.IO clients instead (Engine.IO 4 over a WebSocket, no polling, so no
 * sticky sessions): GET /socket.io/?EIO=4&transport=websocket, "40" to join the main namespace, every
 * "42[...]" event frame is a message, Engine.IO pings ("2") are answered ("3"). Same timestamps.
 *
 * Build: cc -O2 -o xfanout xfanout.c -lm       (bench/cross/xfanout builds it on first use)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAXH 8
static const char *o_hosts = "127.0.0.1:8090", *o_sub = "/events", *o_pub = "/messages";
static int o_clients = 1000, o_par = 100, o_quiet = 0, o_raw = 0, o_sio = 0;
static double o_rate = 20, o_dur = 10, o_ctimeout = 30, o_drain = 3, o_settle = 0.5;
static const char *o_label = "", *o_dump = NULL;   /* --dump FILE: one line per message */

static int64_t now_rt(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static int64_t now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#define LOG(...) do { if (!o_quiet) { fprintf(stderr, "xfanout: " __VA_ARGS__); fputc('\n', stderr); } } while (0)
static void die(const char *m) { perror(m); exit(1); }

/* ---------------- state ---------------- */
enum { C_CONNECTING, C_HEADERS, C_BODY, C_DEAD };
typedef struct {
  int fd, state, ok, chunked, cstate;   /* cstate: 0 size line, 1 data, 2 CRLF */
  long cremain;
  char craw[64]; int crawlen;           /* partial chunk-size line */
  char hbuf[4096]; int hlen;            /* response head */
  char *sse; size_t slen, scap;         /* decoded SSE text not yet split into events */
  char lastid[64];
  int lastk, h;
  uint8_t *seen;
  int *order;   /* the k's in the order they came */
  int count;
  int reconnects;
} client_t;

typedef struct {
  int fd, busy, k, h;
  int64_t t0;
  char buf[4096]; int len;
} pub_t;

#define NPUB 512   /* publisher connections: open loop, a POST never waits for an earlier one */
static client_t *cl;
static pub_t pubs[NPUB];
static int npub;
static int nmsg, ep, tfd;
static char mark[64]; static int marklen;
static struct sockaddr_in addrs[MAXH];
static char hostnames[MAXH][64];
static int nh, overlapping;
static int connected, connecting, next_open, conn_errors, non200, dropped, measuring, connected_at_start;
static int o_reconnect = 1, finishing, reconnects, reconnect_errors;
static long received, duplicates, out_of_order, foreign;
static float *lat_a, *lat_r, *lat_x; static long nlat, nlat_x;   /* ms; lat_x: arrival, cross-host only */
static int64_t first_send, last_delivery_mono, last_post_done_mono;
static int sent, post_ok, post_fail, post_skipped;
static float *post_lat; static int npost_lat;
static float *kmax; static int64_t *ksent;   /* per message: the slowest delivery (ms), the send time */
static int64_t t_start_mono;

/* epoll data: index >= 0 client, -1 - i publisher i, INT32_MIN timer */
static void ep_add(int fd, uint32_t ev, int64_t tag) {
  struct epoll_event e = { .events = ev, .data.u64 = (uint64_t)tag };
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl");
}

static int tcp_socket(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void client_connect(client_t *c);
static void client_close(client_t *c, int counted) {
  if (c->fd >= 0) { close(c->fd); c->fd = -1; }
  int was = c->state;
  if (c->state == C_CONNECTING || c->state == C_HEADERS) { if (!c->reconnects || !c->ok) connecting--; }
  else if (c->state == C_BODY && measuring && counted) dropped++;
  c->state = C_DEAD;
  /* An EventSource reconnects with Last-Event-ID: do the same (at once), so messages the server
   * could not push on the old stream are counted lost only if the reconnect does not bring them. */
  if (o_reconnect && measuring && !finishing && counted && c->ok && (was == C_BODY || c->reconnects)) {
    if (was != C_BODY) reconnect_errors++;
    if (reconnect_errors > 10 * o_clients) return;   /* server gone: stop trying */
    reconnects++;
    c->reconnects++;
    c->hlen = 0; c->chunked = 0; c->cstate = 0; c->crawlen = 0; c->slen = 0;
    client_connect(c);
  }
}

static void client_connect(client_t *c) {
  c->fd = tcp_socket();
  int one = 1;
  setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
  c->state = C_CONNECTING;
  if (!c->ok) connecting++;
  int r = connect(c->fd, (struct sockaddr *)&addrs[c->h], sizeof addrs[0]);
  if (r < 0 && errno != EINPROGRESS) { conn_errors++; client_close(c, c->ok); return; }
  ep_add(c->fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP, c - cl);
}

static void open_next(void) {
  while (connecting < o_par && next_open < o_clients) client_connect(&cl[next_open++]);
}

static void start_measuring(void);

/* ---------------- SSE parsing ---------------- */
static void on_event(client_t *c, const char *b, const char *e, int64_t ts_a, int64_t ts_r) {
  const char *m = memmem(b, e - b, mark, marklen);
  if (!m) { if (memmem(b, e - b, "data:", 5)) foreign++; return; }
  const char *il = (e - b >= 3 && !memcmp(b, "id:", 3)) ? b : memmem(b, e - b, "\nid:", 4);
  if (il) {
    if (il != b) il++;
    il += 3;
    while (*il == ' ') il++;
    size_t n = strcspn(il, "\r\n");
    if (n >= sizeof c->lastid) n = sizeof c->lastid - 1;
    memcpy(c->lastid, il, n);
    c->lastid[n] = 0;
  }
  char *q;
  long k = strtol(m + marklen, &q, 10);
  if (*q != ':' || k < 0 || k >= nmsg) { foreign++; return; }
  int64_t t = strtoll(q + 1, NULL, 10);
  if (c->seen[k]) { duplicates++; return; }
  c->seen[k] = 1;
  c->order[c->count++] = k;
  received++;
  if (k < c->lastk) out_of_order++; else c->lastk = k;
  lat_a[nlat] = (float)((ts_a ? ts_a : ts_r) - t) / 1e6f;
  if (k % nh != c->h) lat_x[nlat_x++] = lat_a[nlat];
  if (lat_a[nlat] > kmax[k]) kmax[k] = lat_a[nlat];
  ksent[k] = t;
  lat_r[nlat] = (float)(ts_r - t) / 1e6f;
  nlat++;
  last_delivery_mono = now_mono();
}

static void sse_feed(client_t *c, const char *d, size_t n, int64_t ts_a, int64_t ts_r) {
  if (c->slen + n + 1 > c->scap) {
    while (c->slen + n + 1 > c->scap) c->scap = c->scap ? c->scap * 2 : 4096;
    c->sse = realloc(c->sse, c->scap);
    if (!c->sse) die("realloc");
  }
  memcpy(c->sse + c->slen, d, n);
  c->slen += n;
  c->sse[c->slen] = 0;
  char *p = c->sse, *end = c->sse + c->slen;
  for (;;) {
    char *e = memmem(p, end - p, "\n\n", 2);
    if (!e) break;
    *e = 0;   /* strtol stops here at worst */
    on_event(c, p, e, ts_a, ts_r);
    p = e + 2;
  }
  c->slen = end - p;
  if (c->slen && p != c->sse) memmove(c->sse, p, c->slen);
}

static void client_ready(client_t *c) {
  if (c->ok) return;
  c->ok = 1;
  connecting--; connected++;
  open_next();
  if (connected == o_clients) start_measuring();
}

/* ---------------- Socket.IO over a WebSocket ---------------- */
static void ws_send(client_t *c, const char *text) {   /* one masked text frame (mask 0: payload as is) */
  char f[64];
  size_t n = strlen(text);
  f[0] = (char)0x81; f[1] = (char)(0x80 | n); memset(f + 2, 0, 4); memcpy(f + 6, text, n);
  if (write(c->fd, f, 6 + n) != (ssize_t)(6 + n)) client_close(c, 1);
}

static void sio_text(client_t *c, char *p, size_t n, int64_t ts_a, int64_t ts_r) {
  if (n >= 1 && p[0] == '0') ws_send(c, "40");                          /* engine open: join "/" */
  else if (n == 1 && p[0] == '2') ws_send(c, "3");                      /* engine ping */
  else if (n >= 2 && p[0] == '4' && p[1] == '0') client_ready(c);       /* namespace joined */
  else if (n >= 2 && p[0] == '4' && p[1] == '2') { char keep = p[n]; p[n] = 0; on_event(c, p, p + n, ts_a, ts_r); p[n] = keep; }
}

static void ws_feed(client_t *c, const char *d, size_t n, int64_t ts_a, int64_t ts_r) {
  if (c->slen + n + 1 > c->scap) {
    while (c->slen + n + 1 > c->scap) c->scap = c->scap ? c->scap * 2 : 4096;
    if (!(c->sse = realloc(c->sse, c->scap))) die("realloc");
  }
  memcpy(c->sse + c->slen, d, n);
  c->slen += n;
  unsigned char *b = (unsigned char *)c->sse;
  size_t p = 0;
  while (c->slen - p >= 2) {
    size_t len = b[p + 1] & 0x7f, hl = 2;
    if (len == 126) { if (c->slen - p < 4) break; len = (size_t)b[p + 2] << 8 | b[p + 3]; hl = 4; }
    else if (len == 127) { if (c->slen - p < 10) break; len = 0; for (int i = 2; i < 10; i++) len = len << 8 | b[p + i]; hl = 10; }
    if (len > (1u << 20)) { LOG("a %zu-byte WebSocket frame: closing that client", len); client_close(c, 1); return; }
    if (c->slen - p < hl + len) break;   /* the buffer keeps a byte free after it: sio_text ends the text there */
    int op = b[p] & 0x0f;
    if (op == 1) sio_text(c, c->sse + p + hl, len, ts_a, ts_r);
    else if (op == 8) { client_close(c, 1); return; }
    if (c->state == C_DEAD) return;
    p += hl + len;
  }
  c->slen -= p;
  if (c->slen && p) memmove(c->sse, c->sse + p, c->slen);
}

static void body_feed(client_t *c, const char *d, size_t n, int64_t ts_a, int64_t ts_r) {
  if (o_sio) { ws_feed(c, d, n, ts_a, ts_r); return; }
  if (!c->chunked) { sse_feed(c, d, n, ts_a, ts_r); return; }
  size_t p = 0;
  while (p < n) {
    if (c->cstate == 0) {
      const char *e = memchr(d + p, '\n', n - p);
      size_t take = e ? (size_t)(e - (d + p)) + 1 : n - p;
      if (c->crawlen + take >= sizeof c->craw) { client_close(c, 1); return; }
      memcpy(c->craw + c->crawlen, d + p, take);
      c->crawlen += take;
      p += take;
      if (!e) break;
      c->craw[c->crawlen] = 0;
      long size = strtol(c->craw, NULL, 16);
      c->crawlen = 0;
      if (size <= 0) { client_close(c, 1); return; }   /* last chunk: the stream ended */
      c->cremain = size;
      c->cstate = 1;
    } else if (c->cstate == 1) {
      size_t take = n - p < (size_t)c->cremain ? n - p : (size_t)c->cremain;
      sse_feed(c, d + p, take, ts_a, ts_r);
      if (c->state == C_DEAD) return;
      p += take;
      c->cremain -= take;
      if (!c->cremain) c->cstate = 2;
    } else {
      /* skip the CRLF after the data (tolerate partial reads) */
      if (d[p] == '\n') c->cstate = 0;
      p++;
    }
  }
}

static char rbuf[1 << 18];

static void client_io(client_t *c, uint32_t ev) {
  if (c->state == C_CONNECTING) {
    int err = 0; socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { conn_errors++; client_close(c, c->ok); open_next(); return; }
    if (!(ev & EPOLLOUT)) return;
    char req[512], lei[96] = "";
    if (c->ok && c->lastid[0]) snprintf(lei, sizeof lei, "Last-Event-ID: %s\r\n", c->lastid);
    int n = o_sio ? snprintf(req, sizeof req, "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bW9vbmZvcmtiZW5jaDEyMw==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n", hostnames[c->h])
                  : snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n%s\r\n",
                             o_sub, hostnames[c->h], lei);
    if (write(c->fd, req, n) != n) { conn_errors++; client_close(c, c->ok); open_next(); return; }
    struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)(c - cl) };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->state = C_HEADERS;
    return;
  }
  for (;;) {
    char cbuf[256];
    struct iovec iov = { rbuf, sizeof rbuf };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    ssize_t n = recvmsg(c->fd, &mh, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      if (c->state == C_HEADERS && !c->ok) conn_errors++;
      client_close(c, 1); open_next(); return;
    }
    if (n == 0) { client_close(c, 1); open_next(); return; }
    int64_t ts_r = now_rt(), ts_a = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
        struct timespec ts; memcpy(&ts, CMSG_DATA(cm), sizeof ts);
        ts_a = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
      }
    const char *d = rbuf; size_t len = n;
    if (c->state == C_HEADERS) {
      size_t take = len;
      if (c->hlen + take > sizeof c->hbuf - 1) take = sizeof c->hbuf - 1 - c->hlen;
      memcpy(c->hbuf + c->hlen, d, take);
      int old = c->hlen;
      c->hlen += take;
      c->hbuf[c->hlen] = 0;
      char *e = strstr(c->hbuf, "\r\n\r\n");
      if (!e) { if (c->hlen >= (int)sizeof c->hbuf - 1) { conn_errors++; client_close(c, 0); open_next(); return; } continue; }
      size_t used = (e + 4 - c->hbuf) - old;
      d += used; len -= used;
      *e = 0;
      if (o_sio ? strncmp(c->hbuf, "HTTP/1.1 101 ", 13) : strncmp(c->hbuf, "HTTP/1.1 200 ", 13) && strncmp(c->hbuf, "HTTP/1.0 200 ", 13)) {
        non200++; client_close(c, c->ok); open_next(); return;
      }
      c->chunked = strcasestr(c->hbuf, "\ntransfer-encoding: chunked") != NULL ||
                   strcasestr(c->hbuf, "\ntransfer-encoding:chunked") != NULL;
      c->state = C_BODY;
      if (!o_sio) client_ready(c);
    }
    if (len && c->state == C_BODY) body_feed(c, d, len, ts_a, ts_r);
    if (c->state != C_BODY) return;
    if ((size_t)n < sizeof rbuf) return;   /* drained (edge cases: the next epoll round reads the rest) */
  }
}

/* ---------------- publisher ---------------- */
static void pub_open(pub_t *p, int i, int h) {
  p->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->fd < 0) die("socket");
  int one = 1;
  setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(p->fd, (struct sockaddr *)&addrs[h], sizeof addrs[0]) < 0) die("publisher connect");
  p->h = h;
  fcntl(p->fd, F_SETFL, O_NONBLOCK);
  ep_add(p->fd, EPOLLIN | EPOLLRDHUP, -1 - (int64_t)i);
  p->busy = 0; p->len = 0;
}

static void post(int k) {
  int i, h = k % nh;
  for (i = 0; i < npub; i++) if (pubs[i].busy) overlapping++;
  for (i = 0; i < npub && (pubs[i].busy || pubs[i].fd < 0 || pubs[i].h != h); i++) {}
  if (i == npub) {
    if (npub == NPUB) { for (i = 0; i < npub && pubs[i].busy; i++) {} if (i == npub) { post_skipped++; LOG("POST %d skipped: all %d publisher connections busy", k, NPUB); return; } }
    else i = npub++;
    if (pubs[i].fd >= 0) { close(pubs[i].fd); pubs[i].fd = -1; }
  }
  pub_t *p = &pubs[i];
  if (p->fd < 0) pub_open(p, i, h);
  char body[256], req[512];
  int64_t t = now_rt();
  int bl = o_raw ? snprintf(body, sizeof body, "%s%d:%lld:", mark, k, (long long)t)
                 : snprintf(body, sizeof body, "{\"user\":\"bench\",\"text\":\"%s%d:%lld:\"}", mark, k, (long long)t);
  int rl = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\n"
                    "Content-Length: %d\r\n\r\n%s", o_pub, hostnames[h], o_raw ? "text/plain" : "application/json", bl, body);
  p->busy = 1; p->k = k; p->t0 = now_mono(); p->len = 0;
  sent++;
  if (write(p->fd, req, rl) != rl) { post_fail++; p->busy = 0; close(p->fd); p->fd = -1; LOG("POST %d: write failed", k); }
}

static void pub_io(pub_t *p) {
  for (;;) {
    ssize_t n = read(p->fd, p->buf + p->len, sizeof p->buf - 1 - p->len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      if (p->busy) { post_fail++; LOG("POST %d: connection closed", p->k); last_post_done_mono = now_mono(); }
      close(p->fd); p->fd = -1; p->busy = 0; return;
    }
    p->len += n;
    p->buf[p->len] = 0;
    char *e = strstr(p->buf, "\r\n\r\n");
    if (!e) continue;
    char *cl_h = strcasestr(p->buf, "\ncontent-length:");
    int complete;
    if (cl_h && cl_h < e) complete = p->len >= (e + 4 - p->buf) + atoi(cl_h + 16);
    else complete = strstr(e + 4, "0\r\n\r\n") != NULL;   /* chunked */
    if (!complete) continue;
    int status = atoi(p->buf + 9);
    last_post_done_mono = now_mono();
    if (status >= 200 && status < 300) { post_ok++; post_lat[npost_lat++] = (float)(last_post_done_mono - p->t0) / 1e6f; }
    else { post_fail++; LOG("POST %d: %.200s", p->k, p->buf); }
    int closeit = strcasestr(p->buf, "\nconnection: close") != NULL;
    p->busy = 0; p->len = 0;
    if (closeit) { close(p->fd); p->fd = -1; }
    return;
  }
}

/* ---------------- run ---------------- */
static int64_t t0_pub; static int next_k; static int phase;   /* 0 connecting, 1 settle, 2 publish, 3 drain */
static int64_t t_phase;

static void arm(int64_t at_mono) {
  struct itimerspec it = { 0 };
  it.it_value.tv_sec = at_mono / 1000000000; it.it_value.tv_nsec = at_mono % 1000000000;
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL);
}

static void start_measuring(void) {
  if (measuring) return;
  measuring = 1;
  connected_at_start = connected;
  next_open = o_clients;
  for (int i = 0; i < o_clients; i++)
    if (cl[i].state == C_CONNECTING || cl[i].state == C_HEADERS) client_close(&cl[i], 0);
  LOG("%d/%d clients connected in %.2f s (errors %d, non-200 %d); publishing %d messages at %g/s",
      connected, o_clients, (now_mono() - t_start_mono) / 1e9, conn_errors, non200, nmsg, o_rate);
  phase = 1;
  arm(now_mono() + (int64_t)(o_settle * 1e9));
}

#include "xfanout_report.h"

static void on_timer(void) {
  uint64_t x; if (read(tfd, &x, sizeof x) < 0) {}
  int64_t now = now_mono();
  if (phase == 0) {   /* connect timeout */
    LOG("only %d/%d clients connected after %g s (errors %d, non-200 %d); measuring with those", connected,
        o_clients, o_ctimeout, conn_errors, non200);
    if (!connected) { printf("RESULT {\"error\":\"no client connected\"}\n"); exit(1); }
    start_measuring();
    return;
  }
  if (phase == 1) { phase = 2; t0_pub = now; first_send = now; }
  if (phase == 2) {
    while (next_k < nmsg && t0_pub + (int64_t)(next_k * 1e9 / o_rate) <= now) post(next_k++);
    if (next_k < nmsg) { arm(t0_pub + (int64_t)(next_k * 1e9 / o_rate)); return; }
    phase = 3; t_phase = now;
  }
  /* phase 3: drain */
  int posts_done = post_ok + post_fail == sent;
  long expected = (long)post_ok * connected_at_start;
  int64_t last = last_delivery_mono > last_post_done_mono ? last_delivery_mono : last_post_done_mono;
  if ((posts_done && received >= expected) || (posts_done && now - last > o_drain * 1e9) || now - t_phase > 30e9)
    finish();
  arm(now + 10000000);
}

static int parse_hosts(const char *list) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", list);
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    char *colon = strrchr(t, ':');
    if (!colon || nh == MAXH) return -1;
    *colon = 0;
    int port = atoi(colon + 1);
    struct sockaddr_in *a = &addrs[nh];
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET; a->sin_port = htons(port);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, t, &a->sin_addr) != 1) return -1;
    snprintf(hostnames[nh], sizeof hostnames[0], "%s:%d", t, port);
    nh++;
  }
  return nh ? 0 : -1;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      puts("usage: xfanout [--hosts IP:PORT,IP:PORT..] [--sub-path /events] [--pub-path /messages]\n"
           "               [--pub-format json|raw] [--proto sse|sio] [--clients C] [--rate R] [--duration D] [--connect-parallel N]\n"
           "              [--connect-timeout S] [--drain S] [--settle S] [--label X] [--quiet]\n"
           "              [--dump FILE]  (per message: k, seconds after the first send, slowest delivery ms)\n"
           "              [--reconnect 1|0]  (reconnect a closed stream with Last-Event-ID, default 1)");
      return 0;
    }
    if (!strcmp(a, "--quiet")) { o_quiet = 1; continue; }
    if (i + 1 >= argc) { fprintf(stderr, "xfanout: %s needs a value\n", a); return 2; }
    const char *v = argv[++i];
    if (!strcmp(a, "--hosts")) o_hosts = v;
    else if (!strcmp(a, "--sub-path")) o_sub = v;
    else if (!strcmp(a, "--pub-path")) o_pub = v;
    else if (!strcmp(a, "--pub-format")) o_raw = !strcmp(v, "raw");
    else if (!strcmp(a, "--proto")) o_sio = !strcmp(v, "sio");
    else if (!strcmp(a, "--clients")) o_clients = atoi(v);
    else if (!strcmp(a, "--rate")) o_rate = atof(v);
    else if (!strcmp(a, "--duration")) o_dur = atof(v);
    else if (!strcmp(a, "--connect-parallel")) o_par = atoi(v);
    else if (!strcmp(a, "--connect-timeout")) o_ctimeout = atof(v);
    else if (!strcmp(a, "--drain")) o_drain = atof(v);
    else if (!strcmp(a, "--settle")) o_settle = atof(v);
    else if (!strcmp(a, "--label")) o_label = v;
    else if (!strcmp(a, "--dump")) o_dump = v;
    else if (!strcmp(a, "--reconnect")) o_reconnect = atoi(v);
    else { fprintf(stderr, "xfanout: unknown option %s\n", a); return 2; }
  }
  if (o_clients < 1 || o_rate <= 0 || o_dur <= 0) { fprintf(stderr, "xfanout: bad clients/rate/duration\n"); return 2; }
  nmsg = (int)lround(o_rate * o_dur);
  if (nmsg < 1) nmsg = 1;
  struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)o_clients + NPUB + 16) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)o_clients + NPUB + 16) { fprintf(stderr, "xfanout: fd limit %lu too low\n", (unsigned long)rl.rlim_cur); return 1; }
  }
  if (parse_hosts(o_hosts) < 0) { fprintf(stderr, "xfanout: --hosts takes IPv4:PORT[,IPv4:PORT..] (at most %d)\n", MAXH); return 2; }
  srand((unsigned)(now_rt() ^ getpid()));
  marklen = snprintf(mark, sizeof mark, "bench:%06x:", rand() & 0xffffff);
  cl = calloc(o_clients, sizeof *cl);
  lat_a = malloc(sizeof(float) * (size_t)o_clients * nmsg);
  lat_r = malloc(sizeof(float) * (size_t)o_clients * nmsg);
  lat_x = malloc(sizeof(float) * (size_t)o_clients * nmsg);
  post_lat = malloc(sizeof(float) * nmsg);
  kmax = calloc(nmsg, sizeof *kmax);
  ksent = calloc(nmsg, sizeof *ksent);
  if (!kmax || !ksent) die("malloc");
  if (!cl || !lat_a || !lat_r || !lat_x || !post_lat) die("malloc");
  for (int i = 0; i < o_clients; i++) { cl[i].fd = -1; cl[i].lastk = -1; cl[i].h = i % nh; cl[i].seen = calloc(nmsg, 1);
    cl[i].order = malloc(sizeof(int) * nmsg); if (!cl[i].seen || !cl[i].order) die("malloc"); }
  for (int i = 0; i < NPUB; i++) pubs[i].fd = -1;
  ep = epoll_create1(EPOLL_CLOEXEC);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  ep_add(tfd, EPOLLIN, INT32_MIN);
  t_start_mono = now_mono();
  LOG("run %.*s: opening %d SSE clients to %s%s", marklen - 7, mark + 6, o_clients, o_hosts, o_sub);
  arm(t_start_mono + (int64_t)(o_ctimeout * 1e9));
  open_next();
  struct epoll_event evs[512];
  for (;;) {
    int n = epoll_wait(ep, evs, 512, -1);
    if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
    for (int i = 0; i < n; i++) {
      int64_t tag = (int64_t)evs[i].data.u64;
      if (tag == INT32_MIN) on_timer();
      else if (tag < 0) { pub_t *p = &pubs[-1 - tag]; if (p->fd >= 0) pub_io(p); }
      else { client_t *c = &cl[tag]; if (c->fd >= 0) client_io(c, evs[i].events); }
    }
  }
}
