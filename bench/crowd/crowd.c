/* bench/crowd/crowd.c -- the crowd bench's load generator: many idle comet clients per process.
 *
 * The 100,000-connection run needs several client processes (20,000 open files per process at most),
 * each holding tens of thousands of streams, so a client must cost little: a few dozen bytes of state,
 * no per-event buffer (the stream is scanned for the run's mark as it is read, keeping at most a few
 * dozen bytes between reads). One binary, three modes:
 *
 *   crowd hold  --port P --clients N --messages M --mark X [--src A,B..] [--proto sse|ws] [--path /events]
 *               [--parallel 256] [--connect-timeout 120] [--lat FILE]
 *       opens N streams (bind() to the source addresses in turn, then connect; IP_BIND_ADDRESS_NO_PORT
 *       so each source address has its own 64k ports), prints "READY {json}" once every stream has its
 *       200 (or 101) head, then checks every delivery: each text "<mark><k>:<t_ns>:" must come with
 *       k = the stream's next index (0, 1, 2, ...). Exits with "RESULT {json}" once every stream has all
 *       M messages, or on SIGTERM/SIGINT. Latency = the kernel's receive timestamp of the segment
 *       (SO_TIMESTAMPNS) minus t_ns, so it measures the server, not this process; --lat writes them as
 *       float32 milliseconds.
 *   crowd post  --port P --messages M --rate R --mark X [--format json|raw] [--path /messages]
 *       POSTs message k at t0 + k/R on one keep-alive connection, waits for each answer (2xx counts);
 *       prints "RESULT {json}" with the POST round trips.
 *   crowd merge FILE...
 *       the percentiles of every latency in the --lat files, as one JSON line.
 *
 * --proto ws: the stream is a WebSocket (GET with Upgrade, 101; text frames are scanned like SSE data,
 * pings answered). Build: cc -O2 -Wall -o crowd crowd.c -lm (bench/crowd/crowd builds it on first use).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { S_CONNECTING, S_HEAD, S_BODY, S_DEAD };
enum { C_SIZE, C_EXT, C_DATA, C_CRLF };          /* chunked decoding */
#define TAILMAX 80                               /* a mark token cut by a read: <mark><k>:<t>: */
#define HEADMAX 2048

typedef struct {
  int fd;
  uint8_t state, chunked, cstate, tlen;
  uint8_t ws_hl, ws_op;                         /* WebSocket: header bytes seen, opcode */
  uint8_t ws_h[14];
  int32_t remain;                               /* chunk or frame payload bytes left */
  int32_t next;                                 /* the message index this stream expects */
  char *head; int hlen;                         /* the response head, only while it is coming */
  char tail[TAILMAX];
} client_t;

static struct {
  int port, clients, messages, parallel, ws, raw;
  double rate, ctimeout;
  const char *mark, *path, *lat, *src;
} opt = { 8080, 1000, 60, 256, 0, 0, 1, 120, NULL, NULL, NULL, "127.0.0.1" };

static client_t *cl;
static struct sockaddr_in dst, *srcs;
static int nsrc, marklen, ep, sigfd, tfd;
static int next_open, inflight, connected, conn_errors, non_ok, dropped, done_streams, ready_sent;
static long received, repeats, skipped, foreign;
static float *lat; static long nlat;
static char rbuf[1 << 16], dec[(1 << 16) + TAILMAX];

static int64_t now_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static void die(const char *m) { perror(m); exit(1); }

/* ---------------- deliveries ---------------- */
static void deliver(client_t *c, long k, int64_t t, int64_t ts) {
  if (k < c->next) { repeats++; return; }       /* a duplicate, or an older message after a newer */
  if (k > c->next) skipped += k - c->next;      /* messages this stream never got before k */
  c->next = (int32_t)k + 1;
  received++;
  if (nlat < (long)opt.clients * opt.messages) lat[nlat++] = (float)((ts - t) / 1e6);
  if (c->next == opt.messages) done_streams++;
}

/* Scans tail + new bytes for "<mark><k>:<t>:" tokens; keeps an unfinished one (or the last
 * marklen-1 bytes) as the new tail. */
static void scan(client_t *c, char *buf, size_t len, int64_t ts) {
  char *p = buf, *end = buf + len;
  for (;;) {
    char *m = memmem(p, end - p, opt.mark, marklen);
    if (!m) { p = end - marklen + 1 > p ? end - marklen + 1 : p; break; }
    char *q = m + marklen, *e1 = q, *e2;
    while (e1 < end && *e1 >= '0' && *e1 <= '9') e1++;
    for (e2 = e1 + 1; e2 < end && *e2 >= '0' && *e2 <= '9'; e2++) {}
    if (e2 >= end) { p = end - m < TAILMAX ? m : end; if (p == end) foreign++; break; }
    if (e1 == q || *e1 != ':' || *e2 != ':') { foreign++; p = m + 1; continue; }
    deliver(c, strtol(q, NULL, 10), strtoll(e1 + 1, NULL, 10), ts);
    p = e2 + 1;
  }
  c->tlen = (uint8_t)(end - p);
  memcpy(c->tail, p, c->tlen);
}

/* ---------------- framing: chunked HTTP body, WebSocket frames ---------------- */
static size_t unchunk(client_t *c, const char *d, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n && c->state == S_BODY;) {
    char ch = d[i];
    if (c->cstate == C_DATA) {
      size_t take = n - i < (size_t)c->remain ? n - i : (size_t)c->remain;
      memcpy(out + o, d + i, take);
      o += take; i += take; c->remain -= (int32_t)take;
      if (!c->remain) c->cstate = C_CRLF;
      continue;
    }
    i++;
    if (c->cstate == C_CRLF) { if (ch == '\n') { c->cstate = C_SIZE; c->remain = 0; } continue; }
    if (ch == '\n') {
      if (c->remain == 0) { c->state = S_DEAD; break; }   /* the last chunk: the stream ended */
      c->cstate = C_DATA;
    } else if (c->cstate == C_SIZE && ch != '\r') {
      int v = ch >= '0' && ch <= '9' ? ch - '0' : (ch | 32) >= 'a' && (ch | 32) <= 'f' ? (ch | 32) - 'a' + 10 : -1;
      if (v < 0) c->cstate = C_EXT;
      else if (c->remain > (1 << 26)) { c->state = S_DEAD; break; }
      else c->remain = c->remain * 16 + v;
    }
  }
  return o;
}

static void ws_send(client_t *c, int op, const char *p, size_t n) {   /* masked with 0: payload as is */
  char f[6 + 125];
  if (n > 125) n = 125;
  f[0] = (char)(0x80 | op); f[1] = (char)(0x80 | n); memset(f + 2, 0, 4); memcpy(f + 6, p, n);
  if (write(c->fd, f, 6 + n) < 0) {}
}

/* Frames from the server are unmasked. Text and continuation payloads go to out; a ping is answered
 * with a pong carrying the part of its payload this read had. */
static void frame_end(client_t *c, const char *payload, size_t n) {
  if (c->ws_op == 9) ws_send(c, 10, payload, n);
  if (c->ws_op == 8) c->state = S_DEAD;        /* a close frame: the stream ended */
  c->ws_hl = 0; c->ws_op = 0xff;
}

static size_t unframe(client_t *c, const char *d, size_t n, char *out) {
  size_t o = 0, i = 0;
  while (i < n && c->state == S_BODY) {
    if (c->ws_op == 0xff) {                     /* reading a frame header */
      c->ws_h[c->ws_hl++] = (uint8_t)d[i++];
      if (c->ws_hl < 2) continue;
      int l7 = c->ws_h[1] & 0x7f, need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
      if (c->ws_hl < need) continue;
      uint64_t len = l7;
      if (l7 == 126) len = (uint64_t)c->ws_h[2] << 8 | c->ws_h[3];
      if (l7 == 127) { len = 0; for (int b = 2; b < 10; b++) len = len << 8 | c->ws_h[b]; }
      if (len > (1u << 24)) { c->state = S_DEAD; break; }
      c->ws_op = c->ws_h[0] & 0x0f; c->remain = (int32_t)len;
      if (!len) { frame_end(c, d + i, 0); continue; }
    }
    size_t take = n - i < (size_t)c->remain ? n - i : (size_t)c->remain;
    if (c->ws_op <= 1) { memcpy(out + o, d + i, take); o += take; }
    i += take; c->remain -= (int32_t)take;
    if (c->remain == 0) frame_end(c, d + i - take, take);
  }
  return o;
}

/* ---------------- streams ---------------- */
static void ep_set(int fd, int mod, uint32_t ev, uint64_t tag) {
  struct epoll_event e = { .events = ev, .data.u64 = tag };
  if (epoll_ctl(ep, mod ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl");
}

static void client_open(client_t *c, int i) {
  int one = 1;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket");
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
  setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  if (bind(c->fd, (struct sockaddr *)&srcs[i % nsrc], sizeof srcs[0]) < 0) die("bind (source address)");
  c->state = S_CONNECTING; c->next = 0; c->ws_op = 0xff;
  inflight++;
  if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
    fprintf(stderr, "crowd: connect: %s\n", strerror(errno));
    conn_errors++; inflight--; close(c->fd); c->fd = -1; c->state = S_DEAD;
    return;
  }
  ep_set(c->fd, 0, EPOLLOUT, (uint64_t)i);
}

static void open_more(void) {
  while (inflight < opt.parallel && next_open < opt.clients) { client_open(&cl[next_open], next_open); next_open++; }
}

static void print_ready(void) {
  if (ready_sent) return;
  ready_sent = 1;
  printf("READY {\"clients\":%d,\"connected\":%d,\"conn_errors\":%d,\"non_ok\":%d}\n", opt.clients, connected,
         conn_errors, non_ok);
  fflush(stdout);
}

static void client_close(client_t *c) {
  int was = c->state;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1; c->state = S_DEAD;
  free(c->head); c->head = NULL;
  if (was == S_BODY) dropped++;
  else if (was != S_DEAD) { inflight--; conn_errors++; }
}

static void send_request(client_t *c, int i) {
  char req[512];
  int err = 0; socklen_t l = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
  int n = opt.ws ? snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Key: Y3Jvd2RiZW5jaGtleTEyMw==\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n", opt.path, opt.port)
                   : snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                              "Accept: text/event-stream\r\n\r\n", opt.path, opt.port);
  if (err || write(c->fd, req, n) != n) {
    if (err) fprintf(stderr, "crowd: connect: %s\n", strerror(err));
    client_close(c); return;
  }
  c->state = S_HEAD;
  ep_set(c->fd, 1, EPOLLIN | EPOLLRDHUP, (uint64_t)i);
}

/* The response head: 200 (SSE) or 101 (WebSocket) makes the stream count as connected. Returns the
 * bytes of d that were part of the head, or -1 once the stream is closed. */
static long read_head(client_t *c, const char *d, size_t n) {
  if (!c->head && !(c->head = malloc(HEADMAX))) die("malloc");
  size_t take = n < (size_t)(HEADMAX - 1 - c->hlen) ? n : (size_t)(HEADMAX - 1 - c->hlen);
  memcpy(c->head + c->hlen, d, take);
  int old = c->hlen;
  c->hlen += (int)take;
  c->head[c->hlen] = 0;
  char *e = strstr(c->head, "\r\n\r\n");
  if (!e) { if (c->hlen >= HEADMAX - 1) { non_ok++; client_close(c); return -1; } return (long)take; }
  long used = (e + 4 - c->head) - old;
  const char *want = opt.ws ? " 101 " : " 200 ";
  if (strncmp(c->head, "HTTP/1.", 7) || strncmp(c->head + 8, want, 5)) {
    if (non_ok++ < 3) fprintf(stderr, "crowd: not a %.3s: %.200s\n", want + 1, c->head);
    c->state = S_DEAD; close(c->fd); c->fd = -1; inflight--; free(c->head); c->head = NULL;
    return -1;
  }
  *e = 0;
  c->chunked = !opt.ws && strcasestr(c->head, "\ntransfer-encoding:") && strcasestr(c->head, "chunked");
  free(c->head); c->head = NULL;
  c->state = S_BODY; inflight--; connected++;
  return used;
}

static void client_read(client_t *c) {
  char cbuf[128];
  struct iovec iov = { rbuf, sizeof rbuf };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
  ssize_t n = recvmsg(c->fd, &mh, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) { client_close(c); return; }
  int64_t ts = 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
      struct timespec t; memcpy(&t, CMSG_DATA(cm), sizeof t);
      ts = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
    }
  if (!ts) ts = now_ns(CLOCK_REALTIME);
  const char *d = rbuf;
  if (c->state == S_HEAD) {
    long used = read_head(c, d, n);
    if (used < 0 || c->state != S_BODY) return;
    d += used; n -= used;
  }
  memcpy(dec, c->tail, c->tlen);
  size_t o = opt.ws ? unframe(c, d, n, dec + c->tlen) : c->chunked ? unchunk(c, d, n, dec + c->tlen)
                                                                    : (memcpy(dec + c->tlen, d, n), (size_t)n);
  scan(c, dec, c->tlen + o, ts);
  if (c->state == S_DEAD) { c->state = S_BODY; client_close(c); }
}

/* ---------------- hold: the run ---------------- */
static void hold_result(void) {
  int minc = -1, maxc = 0;
  for (int i = 0; i < opt.clients; i++) {
    if (cl[i].state != S_BODY && !cl[i].next) continue;
    if (minc < 0 || cl[i].next < minc) minc = cl[i].next;
    if (cl[i].next > maxc) maxc = cl[i].next;
  }
  long expected = (long)connected * opt.messages;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  printf("RESULT {\"clients\":%d,\"connected\":%d,\"conn_errors\":%d,\"non_ok\":%d,\"dropped\":%d,"
         "\"messages\":%d,\"expected\":%ld,\"received\":%ld,\"lost\":%ld,\"repeats\":%ld,\"skipped\":%ld,"
         "\"foreign\":%ld,\"complete_streams\":%d,\"per_stream_min\":%d,\"per_stream_max\":%d,\"cpu_s\":%.3f}\n",
         opt.clients, connected, conn_errors, non_ok, dropped, opt.messages, expected, received,
         expected > received ? expected - received : 0, repeats, skipped, foreign, done_streams,
         minc < 0 ? 0 : minc, maxc, cpu);
  fflush(stdout);
  if (opt.lat) {
    FILE *f = fopen(opt.lat, "w");
    if (!f || fwrite(lat, sizeof *lat, nlat, f) != (size_t)nlat || fclose(f)) die(opt.lat);
  }
  exit(0);
}

static void on_connect_timeout(void) {
  uint64_t x;
  if (read(tfd, &x, sizeof x) < 0) {}
  if (ready_sent) return;
  fprintf(stderr, "crowd: %d of %d streams connected after %g s; going on with those\n", connected, opt.clients,
          opt.ctimeout);
  next_open = opt.clients;
  for (int i = 0; i < opt.clients; i++)
    if (cl[i].state == S_CONNECTING || cl[i].state == S_HEAD) client_close(&cl[i]);
  print_ready();
}

static void hold_loop(void) {
  static struct epoll_event evs[1024];
  for (;;) {
    if (!ready_sent && next_open == opt.clients && !inflight) print_ready();
    if (ready_sent && done_streams + dropped >= connected) hold_result();
    int n = epoll_wait(ep, evs, 1024, -1);
    if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == UINT64_MAX) hold_result();     /* SIGTERM or SIGINT: report what came */
      if (tag == UINT64_MAX - 1) { on_connect_timeout(); continue; }
      client_t *c = &cl[tag];
      if (c->fd < 0) continue;
      if (c->state == S_CONNECTING) send_request(c, (int)tag);
      else client_read(c);
    }
    open_more();
  }
}

static int parse_srcs(void) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", opt.src);
  srcs = calloc(64, sizeof *srcs);
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && nsrc < 64; t = strtok_r(NULL, ",", &save)) {
    srcs[nsrc].sin_family = AF_INET;
    if (inet_pton(AF_INET, t, &srcs[nsrc].sin_addr) != 1) return -1;
    nsrc++;
  }
  return nsrc ? 0 : -1;
}

static int hold_main(void) {
  if (!opt.mark || opt.clients < 1 || opt.messages < 1) { fprintf(stderr, "crowd hold: --mark, --clients, --messages\n"); return 2; }
  if (parse_srcs() < 0) { fprintf(stderr, "crowd hold: --src takes IPv4 addresses, comma-separated\n"); return 2; }
  cl = calloc(opt.clients, sizeof *cl);
  lat = malloc(sizeof(float) * (size_t)opt.clients * opt.messages);
  if (!cl || !lat) die("malloc");
  for (int i = 0; i < opt.clients; i++) cl[i].fd = -1;
  sigset_t ss;
  sigemptyset(&ss); sigaddset(&ss, SIGTERM); sigaddset(&ss, SIGINT);
  sigprocmask(SIG_BLOCK, &ss, NULL);
  signal(SIGPIPE, SIG_IGN);
  ep = epoll_create1(EPOLL_CLOEXEC);
  sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (ep < 0 || sigfd < 0 || tfd < 0) die("epoll/signalfd/timerfd");
  ep_set(sigfd, 0, EPOLLIN, UINT64_MAX);
  ep_set(tfd, 0, EPOLLIN, UINT64_MAX - 1);
  struct itimerspec it = { .it_value = { (time_t)opt.ctimeout, (long)((opt.ctimeout - (time_t)opt.ctimeout) * 1e9) } };
  timerfd_settime(tfd, 0, &it, NULL);
  open_more();
  hold_loop();
  return 0;
}

/* ---------------- post: the publisher ---------------- */
static int post_connect(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  struct timeval tv = { 10, 0 };
  if (fd < 0) die("socket");
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("crowd post: connect"); close(fd); return -1; }
  return fd;
}

/* Sends one POST and reads its answer; returns the status, or -1 (the connection is then closed). */
static int post_one(int *fd, int k) {
  char body[256], req[640], resp[4096];
  int bl = opt.raw ? snprintf(body, sizeof body, "%s%d:%lld:", opt.mark, k, (long long)now_ns(CLOCK_REALTIME))
                   : snprintf(body, sizeof body, "{\"user\":\"crowd\",\"text\":\"%s%d:%lld:\"}", opt.mark, k,
                              (long long)now_ns(CLOCK_REALTIME));
  int rl = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\n"
                    "Content-Length: %d\r\n\r\n%s", opt.path, opt.port, opt.raw ? "text/plain" : "application/json", bl, body);
  if (*fd < 0 && (*fd = post_connect()) < 0) return -1;
  int len = 0, complete = 0;
  if (write(*fd, req, rl) != rl) goto fail;
  while (!complete) {
    ssize_t n = read(*fd, resp + len, sizeof resp - 1 - len);
    if (n <= 0) goto fail;
    len += n; resp[len] = 0;
    char *e = strstr(resp, "\r\n\r\n"), *clh = strcasestr(resp, "\ncontent-length:");
    if (!e) continue;
    complete = clh && clh < e ? len >= (e + 4 - resp) + atoi(clh + 16) : strstr(e + 4, "0\r\n\r\n") != NULL;
    if (len >= (int)sizeof resp - 1) goto fail;
  }
  if (strcasestr(resp, "\nconnection: close")) { close(*fd); *fd = -1; }
  return atoi(resp + 9);
fail:
  close(*fd); *fd = -1;
  return -1;
}

static int cmpf(const void *a, const void *b) { float x = *(const float *)a, y = *(const float *)b; return x < y ? -1 : x > y; }
static double pct(const float *s, long n, double p) {
  if (!n) return NAN;
  long i = (long)ceil(p / 100 * n) - 1;
  return s[i < 0 ? 0 : i >= n ? n - 1 : i];
}
static void jnum(const char *k, double v) { if (isnan(v)) printf(",\"%s\":null", k); else printf(",\"%s\":%.3f", k, v); }

static int post_main(void) {
  if (!opt.mark || opt.messages < 1 || opt.rate <= 0) { fprintf(stderr, "crowd post: --mark, --messages, --rate\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  float *rtt = malloc(sizeof(float) * opt.messages);
  int fd = -1, ok = 0, fail = 0, late = 0;
  int64_t t0 = now_ns(CLOCK_MONOTONIC);
  for (int k = 0; k < opt.messages; k++) {
    int64_t at = t0 + (int64_t)(k * 1e9 / opt.rate);
    struct timespec ts = { at / 1000000000, at % 1000000000 };
    if (now_ns(CLOCK_MONOTONIC) > at + 100000000) late++;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
    int64_t s = now_ns(CLOCK_MONOTONIC);
    int st = post_one(&fd, k);
    if (st >= 200 && st < 300) rtt[ok++] = (float)((now_ns(CLOCK_MONOTONIC) - s) / 1e6);
    else { fail++; fprintf(stderr, "crowd post: message %d: %s %d\n", k, st < 0 ? "failed" : "status", st); }
  }
  qsort(rtt, ok, sizeof *rtt, cmpf);
  printf("RESULT {\"sent\":%d,\"post_ok\":%d,\"post_fail\":%d,\"late\":%d", opt.messages, ok, fail, late);
  jnum("post_p50_ms", pct(rtt, ok, 50)); jnum("post_p99_ms", pct(rtt, ok, 99)); jnum("post_max_ms", ok ? rtt[ok - 1] : NAN);
  printf("}\n");
  return fail ? 1 : 0;
}

/* ---------------- merge: percentiles over every hold process's latencies ---------------- */
static int merge_main(int argc, char **argv) {
  long n = 0, cap = 1 << 20;
  float *all = malloc(sizeof(float) * cap);
  for (int i = 0; i < argc; i++) {
    FILE *f = fopen(argv[i], "r");
    if (!f) die(argv[i]);
    size_t got;
    while (all && (got = fread(all + n, sizeof *all, cap - n, f)) > 0)
      if ((n += got) == cap) all = realloc(all, sizeof(float) * (cap *= 2));
    fclose(f);
  }
  if (!all) die("malloc");
  qsort(all, n, sizeof *all, cmpf);
  printf("{\"deliveries\":%ld", n);
  jnum("p50_ms", pct(all, n, 50)); jnum("p90_ms", pct(all, n, 90)); jnum("p99_ms", pct(all, n, 99));
  jnum("p999_ms", pct(all, n, 99.9)); jnum("max_ms", n ? all[n - 1] : NAN);
  printf("}\n");
  return 0;
}

static int parse_opts(int argc, char **argv) {
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) { fprintf(stderr, "crowd: %s needs a value\n", a); return -1; }
    i++;
    if (!strcmp(a, "--port")) opt.port = atoi(v);
    else if (!strcmp(a, "--clients")) opt.clients = atoi(v);
    else if (!strcmp(a, "--messages")) opt.messages = atoi(v);
    else if (!strcmp(a, "--parallel")) opt.parallel = atoi(v);
    else if (!strcmp(a, "--rate")) opt.rate = atof(v);
    else if (!strcmp(a, "--connect-timeout")) opt.ctimeout = atof(v);
    else if (!strcmp(a, "--mark")) opt.mark = v;
    else if (!strcmp(a, "--path")) opt.path = v;
    else if (!strcmp(a, "--lat")) opt.lat = v;
    else if (!strcmp(a, "--src")) opt.src = v;
    else if (!strcmp(a, "--proto") && (!strcmp(v, "sse") || !strcmp(v, "ws"))) opt.ws = !strcmp(v, "ws");
    else if (!strcmp(a, "--format") && (!strcmp(v, "json") || !strcmp(v, "raw"))) opt.raw = !strcmp(v, "raw");
    else { fprintf(stderr, "crowd: unknown option or value: %s %s\n", a, v); return -1; }
  }
  if (opt.port <= 0 || opt.port > 65535 || opt.parallel < 1) { fprintf(stderr, "crowd: bad --port or --parallel\n"); return -1; }
  if (opt.mark && ((marklen = (int)strlen(opt.mark)) < 4 || marklen > 40)) { fprintf(stderr, "crowd: --mark: 4 to 40 characters\n"); return -1; }
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (!strcmp(mode, "merge")) return merge_main(argc - 2, argv + 2);
  if (strcmp(mode, "hold") && strcmp(mode, "post")) {
    fprintf(stderr, "usage: crowd hold|post|merge [options] (see the head of bench/crowd/crowd.c)\n");
    return 2;
  }
  if (parse_opts(argc, argv) < 0) return 2;
  if (!opt.path) opt.path = !strcmp(mode, "hold") ? "/events" : "/messages";
  dst.sin_family = AF_INET; dst.sin_port = htons(opt.port); dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return !strcmp(mode, "hold") ? hold_main() : post_main();
}
