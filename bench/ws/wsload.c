/* bench/ws/wsload.c -- a WebSocket load generator and chat driver (one thread, epoll, masked frames).
 *
 * Three modes, each a client of many WebSocket connections on one event loop:
 *   echo    C connections each send a message of S bytes and wait for it to come back, again and again,
 *           for D seconds (one message in flight per connection; --inflight N: N). Reports messages per second.
 *   fanout  C subscribers on --path; once every one is open, one publisher on --pub-path sends R
 *           messages a second for D seconds, each carrying its send time (CLOCK_REALTIME, ns). Every
 *           subscriber records send-to-delivery latency: the kernel's receive timestamp of the read
 *           that completed the frame (SO_TIMESTAMPNS, the time the bytes reached this host's socket),
 *           minus the send time, so this process's own scheduling delay is not in the number.
 *           Reports deliveries expected and received, p50/p90/p99/max.
 *   chat    C chat clients on --path (a printf format with one %s: the last id seen, "0" at first),
 *           as the chat page does: each text frame is one message {"id":N,...}; on a close frame
 *           (1001 on a reload) or a dropped TCP connection the client reconnects at once with its
 *           last id. Each client checks that ids come gap-free and without duplicates. Prints
 *           "STATUS ..." lines as counters change; reads "end K" on stdin, then exits once every
 *           client has seen id K, with a "DONE ..." line (exit status 0 when no client missed or
 *           repeated anything and every one got a 1001 when --want-1001 is given). At the end of
 *           stdin it stops at once (status 1).
 * Why a C client: a Lua select() loop stops at 1,024 descriptors, and a Node client's own event loop
 * delay ends up in the latency it reports.
 *
 * Every mode prints one line "RESULT {json}" at the end (chat: after DONE).
 * Build: cc -O2 -Wall -o wsload wsload.c -lm       (bench/ws/wsload builds it on first use)
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
#include <time.h>
#include <unistd.h>

enum { M_ECHO, M_FANOUT, M_CHAT };
static int o_mode, o_port = 8080, o_conns = 100, o_size = 32, o_par = 200, o_want1001 = 0, o_inflight = 1;
static double o_dur = 5, o_rate = 20, o_timeout = 60, o_drain = 2;
static const char *o_host = "127.0.0.1", *o_path = "/echo", *o_pub = "/pub", *o_label = "", *o_trace = NULL;
static FILE *trace_f;     /* fanout --trace: one line per delivery, "message subscriber ms" */
static struct sockaddr_in addr;
static int ep;

static int64_t now_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#define MONO() now_ns(CLOCK_MONOTONIC)
#define REAL() now_ns(CLOCK_REALTIME)
static void die(const char *m) { perror(m); exit(1); }

/* ---------------- connections ---------------- */
enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN };
typedef struct {
  int fd, state, pub, closing;
  char *in; size_t inlen, incap;      /* bytes read, not yet parsed */
  char *out; size_t outlen, outcap;   /* bytes to write */
  char *msg; size_t msglen, msgcap; int msgop; /* a fragmented message being reassembled */
  long last, got, gaps, dups, closes1001, reconnects;
  int64_t due;                        /* S_IDLE: reconnect at this MONO() time */
  int opened;
  int want_out;                       /* EPOLLOUT is in the epoll interest */
} conn_t;

static conn_t *cs;       /* o_conns clients, then the publisher (fanout) */
static int ncs;
static long n_open, n_ever_open, n_errors, n_echo, n_sent, n_recv;
static float *lat; static long nlat, latcap;
static int measuring, finished;
static long end_id = -1;
static int stdin_eof;
static int64_t rx_ts;     /* the kernel's receive time of the last read (fanout), CLOCK_REALTIME ns */

static void grow(char **p, size_t *cap, size_t need) {
  if (need <= *cap) return;
  size_t c = *cap ? *cap : 4096;
  while (c < need) c *= 2;
  char *n = realloc(*p, c);
  if (!n) die("realloc");
  *p = n; *cap = c;
}

static void ep_mod(conn_t *c, int op, uint32_t ev) {
  struct epoll_event e = { .events = ev, .data.u32 = (uint32_t)(c - cs) };
  if (epoll_ctl(ep, op, c->fd, &e) < 0) die("epoll_ctl");
}

static void conn_drop(conn_t *c, int code);

/* Writes what is queued; keeps the rest and asks for EPOLLOUT. The epoll interest changes only when
 * EPOLLOUT must be added or taken out, so a load generator costs no epoll_ctl per message. */
static void conn_flush(conn_t *c) {
  while (c->outlen) {
    ssize_t n = write(c->fd, c->out, c->outlen);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      if (!c->want_out) { ep_mod(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT | EPOLLRDHUP); c->want_out = 1; }
      return;
    }
    if (n < 0) { conn_drop(c, 1006); return; }
    memmove(c->out, c->out + n, c->outlen - (size_t)n);
    c->outlen -= (size_t)n;
  }
  if (c->want_out) { ep_mod(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP); c->want_out = 0; }
}

/* Queues one masked frame (a client must mask, RFC 6455 5.3). It goes out at the next conn_flush: for
 * a connection being read, once everything read has been parsed (one write for all its replies), as a
 * server's writes would; elsewhere the caller flushes. */
static void ws_send(conn_t *c, int op, const char *data, size_t len) {
  uint8_t h[14]; size_t hl = 2;
  h[0] = (uint8_t)(0x80 | op);
  if (len < 126) h[1] = (uint8_t)(0x80 | len);
  else if (len < 65536) { h[1] = 0x80 | 126; h[2] = (uint8_t)(len >> 8); h[3] = (uint8_t)len; hl = 4; }
  else { h[1] = 0x80 | 127; for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i)); hl = 10; }
  uint32_t r = (uint32_t)rand();
  uint8_t *mask = h + hl;
  memcpy(mask, &r, 4); hl += 4;
  grow(&c->out, &c->outcap, c->outlen + hl + len);
  memcpy(c->out + c->outlen, h, hl);
  uint8_t *p = (uint8_t *)c->out + c->outlen + hl;
  for (size_t i = 0; i < len; i++) p[i] = (uint8_t)data[i] ^ mask[i & 3];
  c->outlen += hl + len;
}

static void conn_open(conn_t *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket");
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (o_mode == M_FANOUT) setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
  c->state = S_CONNECTING; c->inlen = c->outlen = c->msglen = 0; c->closing = 0;
  if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
    close(c->fd); c->fd = -1; c->state = S_IDLE; c->due = MONO() + 50000000; n_errors++;
    return;
  }
  ep_mod(c, EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
  c->want_out = 1;
}

static void send_request(conn_t *c) {
  char path[512], req[1024];
  if (o_mode == M_CHAT) {
    char last[32];
    snprintf(last, sizeof last, "%ld", c->last);
    snprintf(path, sizeof path, o_path, last);
  } else snprintf(path, sizeof path, "%s", c->pub ? o_pub : o_path);
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    path, o_host, o_port);
  grow(&c->out, &c->outcap, (size_t)n);
  memcpy(c->out, req, (size_t)n); c->outlen = (size_t)n;
  c->state = S_HANDSHAKE;
  conn_flush(c);
}

/* The connection ended (code: the close frame's, 1006 without one). Chat clients come back at once. */
static void conn_drop(conn_t *c, int code) {
  if (c->fd < 0) return;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd); c->fd = -1;
  if (c->state == S_OPEN) n_open--;
  else n_errors++;
  c->state = S_IDLE;
  if (code == 1001) c->closes1001++;
  if (o_mode == M_CHAT && !finished) { c->reconnects++; c->due = MONO(); }
  else c->due = INT64_MAX;
}

static void send_echo(conn_t *c) {
  static char buf[1 << 16];
  if ((size_t)o_size > sizeof buf) o_size = sizeof buf;
  memset(buf, 'x', (size_t)o_size);
  ws_send(c, 1, buf, (size_t)o_size);
}

static void record_lat(float ms) {
  if (nlat == latcap) {
    latcap = latcap ? latcap * 2 : 1 << 16;
    lat = realloc(lat, sizeof *lat * (size_t)latcap);
    if (!lat) die("realloc");
  }
  lat[nlat++] = ms;
}

/* One whole message arrived on c. */
static void on_message(conn_t *c, const char *d, size_t n) {
  if (o_mode == M_ECHO) {
    if (!measuring) return;
    n_echo++;
    send_echo(c);
  } else if (o_mode == M_FANOUT) {
    if (c->pub || n < 3 || memcmp(d, "t=", 2)) return;
    char *e;
    int64_t t = strtoll(d + 2, &e, 10);
    n_recv++;
    record_lat((float)((rx_ts - t) / 1e6));
    if (trace_f) fprintf(trace_f, "%ld %ld %.3f\n", strncmp(e, " k=", 3) ? -1L : strtol(e + 3, NULL, 10),
                         (long)(c - cs), (rx_ts - t) / 1e6);
  } else {
    const char *p = memmem(d, n, "\"id\":", 5);
    if (!p) return;
    p += 5;
    while (*p == ' ' || *p == '"') p++;
    long id = strtol(p, NULL, 10);
    if (id <= c->last) c->dups++;
    else { c->gaps += id - c->last - 1; c->last = id; }
    c->got++;
  }
}

/* Parses the frames in c->in; returns 0, or -1 when c was dropped. */
static int parse_frames(conn_t *c) {
  size_t off = 0;
  while (c->inlen - off >= 2) {
    uint8_t *b = (uint8_t *)c->in + off;
    int fin = b[0] & 0x80, op = b[0] & 0x0f;
    uint64_t len = b[1] & 0x7f; size_t hl = 2;
    if (b[1] & 0x80) { conn_drop(c, 1002); return -1; } /* servers never mask */
    if (len == 126) { if (c->inlen - off < 4) break; len = (uint64_t)b[2] << 8 | b[3]; hl = 4; }
    else if (len == 127) {
      if (c->inlen - off < 10) break;
      len = 0; for (int i = 0; i < 8; i++) len = len << 8 | b[2 + i];
      hl = 10;
    }
    if (c->inlen - off < hl + len) break;
    const char *d = (const char *)b + hl;
    off += hl + len;
    if (op == 9) ws_send(c, 10, d, len);
    else if (op == 8) {
      int code = len >= 2 ? ((uint8_t)d[0] << 8 | (uint8_t)d[1]) : 1005;
      if (!c->closing) { ws_send(c, 8, d, len >= 2 ? 2 : 0); conn_flush(c); }
      conn_drop(c, code);
      return -1;
    } else if (op == 1 || op == 2 || op == 0) {
      if (op) c->msgop = op;
      if (fin && !c->msglen) on_message(c, d, len);
      else {
        grow(&c->msg, &c->msgcap, c->msglen + len);
        memcpy(c->msg + c->msglen, d, len); c->msglen += len;
        if (fin) { on_message(c, c->msg, c->msglen); c->msglen = 0; }
      }
    }
    if (c->fd < 0) return -1;
  }
  memmove(c->in, c->in + off, c->inlen - off);
  c->inlen -= off;
  return 0;
}

static void on_open(conn_t *c) {
  c->state = S_OPEN; n_open++;
  if (!c->opened) { c->opened = 1; n_ever_open++; }
  if (o_mode == M_ECHO && measuring) for (int i = 0; i < o_inflight; i++) send_echo(c);
}

/* read(2), with the kernel's receive timestamp into rx_ts (the time now when there is none). */
static ssize_t read_stamped(int fd, char *buf, size_t len) {
  char cbuf[128];
  struct iovec iov = { buf, len };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
  ssize_t n = recvmsg(fd, &mh, 0);
  if (n <= 0) return n;
  rx_ts = 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
      struct timespec t; memcpy(&t, CMSG_DATA(cm), sizeof t);
      rx_ts = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
    }
  if (!rx_ts) rx_ts = REAL();
  return n;
}

static void on_readable(conn_t *c) {
  for (;;) {
    grow(&c->in, &c->incap, c->inlen + 65536);
    size_t room = c->incap - c->inlen;
    ssize_t n = o_mode == M_FANOUT ? read_stamped(c->fd, c->in + c->inlen, room)
                                   : read(c->fd, c->in + c->inlen, room);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) { conn_drop(c, 1006); return; }
    c->inlen += (size_t)n;
    if (c->state == S_HANDSHAKE) {
      char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
      if (!e) continue;
      if (c->inlen < 12 || memcmp(c->in + 9, "101", 3)) {
        if (o_mode != M_CHAT) fprintf(stderr, "wsload: no upgrade: %.*s\n", (int)(e - c->in), c->in);
        conn_drop(c, 1006); return;
      }
      size_t hl = (size_t)(e - c->in) + 4;
      memmove(c->in, c->in + hl, c->inlen - hl); c->inlen -= hl;
      on_open(c);
    }
    if (c->state == S_OPEN && parse_frames(c) < 0) return;
    /* a read that did not fill the room took all there was: the next read would only say EAGAIN
     * (epoll is level-triggered, so anything that comes later wakes us again) */
    if ((size_t)n < room) return;
  }
}

static void on_event(conn_t *c, uint32_t ev) {
  if (c->state == S_CONNECTING) {
    int err = 0; socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { conn_drop(c, 1006); return; }
    send_request(c);
    if (c->fd < 0) return;
  }
  if (ev & EPOLLOUT) conn_flush(c);
  if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) on_readable(c);
  if (c->fd >= 0 && c->outlen) conn_flush(c);
}

/* ---------------- the run ---------------- */
static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}
static double pct(double p) {
  if (!nlat) return 0;
  long i = (long)ceil(p / 100.0 * nlat) - 1;
  if (i < 0) i = 0;
  return lat[i];
}

static void loop_once(int timeout_ms) {
  struct epoll_event evs[256];
  int n = epoll_wait(ep, evs, 256, timeout_ms);
  for (int i = 0; i < n; i++) {
    conn_t *c = &cs[evs[i].data.u32];
    if (c->fd >= 0) on_event(c, evs[i].events);
  }
}

/* Opens idle clients (at most o_par connecting at once) whose time has come. */
static void open_due(int upto) {
  int64_t now = MONO();
  int connecting = 0;
  for (int i = 0; i < upto; i++) connecting += cs[i].state == S_CONNECTING || cs[i].state == S_HANDSHAKE;
  for (int i = 0; i < upto && connecting < o_par; i++) {
    if (cs[i].state == S_IDLE && cs[i].due <= now) { conn_open(&cs[i]); connecting++; }
  }
}

static int wait_all_open(void) {
  int64_t deadline = MONO() + (int64_t)(o_timeout * 1e9);
  while (n_open < o_conns) {
    if (MONO() > deadline) {
      fprintf(stderr, "wsload: only %ld of %d connections opened in %.0f s (%ld errors)\n", n_open, o_conns, o_timeout, n_errors);
      return -1;
    }
    open_due(o_conns);
    loop_once(5);
  }
  return 0;
}

static int run_echo(void) {
  if (wait_all_open() < 0) return 1;
  measuring = 1;
  int64_t t0 = MONO(), end = t0 + (int64_t)(o_dur * 1e9);
  for (int i = 0; i < o_conns; i++) {
    for (int k = 0; k < o_inflight; k++) send_echo(&cs[i]);
    conn_flush(&cs[i]);
  }
  while (MONO() < end) loop_once(1);
  double secs = (MONO() - t0) / 1e9;
  measuring = 0;
  printf("echo %s: %d connections, %d in flight each, %d-byte messages: %.0f messages/s (%ld in %.2f s), %ld errors\n",
         o_label, o_conns, o_inflight, o_size, n_echo / secs, n_echo, secs, n_errors);
  printf("RESULT {\"mode\":\"echo\",\"label\":\"%s\",\"conns\":%d,\"inflight\":%d,\"size\":%d,\"msgs\":%ld,\"secs\":%.3f,"
         "\"rate\":%.0f,\"errors\":%ld}\n", o_label, o_conns, o_inflight, o_size, n_echo, secs, n_echo / secs, n_errors);
  return n_echo > 0 ? 0 : 1;
}

static int run_fanout(void) {
  if (wait_all_open() < 0) return 1;
  conn_t *p = &cs[o_conns];
  p->pub = 1;
  conn_open(p);
  int64_t deadline = MONO() + (int64_t)(o_timeout * 1e9);
  while (p->state != S_OPEN) {
    if (MONO() > deadline || p->state == S_IDLE) { fprintf(stderr, "wsload: the publisher did not open\n"); return 1; }
    loop_once(5);
  }
  long total = lround(o_rate * o_dur);
  int64_t t0 = MONO(), step = (int64_t)(1e9 / o_rate);
  char buf[1 << 16];
  while (n_sent < total) {
    int64_t due = t0 + n_sent * step, now = MONO();
    if (now >= due) {
      int n = snprintf(buf, sizeof buf, "t=%lld k=%ld ", (long long)REAL(), n_sent);
      if (n < o_size) { memset(buf + n, 'x', (size_t)(o_size - n)); n = o_size; }
      ws_send(p, 1, buf, (size_t)n);
      conn_flush(p);
      n_sent++;
      continue;
    }
    loop_once((int)((due - now) / 1000000));
  }
  long want = n_sent * o_conns;
  int64_t end = MONO() + (int64_t)(o_drain * 1e9);
  while (n_recv < want && MONO() < end) loop_once(5);
  qsort(lat, (size_t)nlat, sizeof *lat, cmp_f);
  printf("fanout %s: %d subscribers, %ld messages at %.0f/s: %ld of %ld delivered; ms p50 %.3f p90 %.3f p99 %.3f max %.3f\n",
         o_label, o_conns, n_sent, o_rate, n_recv, want, pct(50), pct(90), pct(99), nlat ? lat[nlat - 1] : 0);
  printf("RESULT {\"mode\":\"fanout\",\"label\":\"%s\",\"conns\":%d,\"sent\":%ld,\"expected\":%ld,\"received\":%ld,"
         "\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}\n", o_label, o_conns, n_sent, want, n_recv,
         pct(50), pct(90), pct(99), nlat ? lat[nlat - 1] : 0);
  return n_recv == want ? 0 : 1;
}

/* chat: STATUS lines when a counter moves; "end K" on stdin; DONE once every client has seen K. */
static void chat_status(int force) {
  static char prev[512];
  char line[512];
  long c1001 = 0, any1001 = 0, rec = 0, gaps = 0, dups = 0, minl = -1, maxl = 0;
  for (int i = 0; i < o_conns; i++) {
    conn_t *c = &cs[i];
    c1001 += c->closes1001; any1001 += c->closes1001 > 0; rec += c->reconnects;
    gaps += c->gaps; dups += c->dups;
    if (minl < 0 || c->last < minl) minl = c->last;
    if (c->last > maxl) maxl = c->last;
  }
  snprintf(line, sizeof line, "open=%ld ever=%ld closes1001=%ld clients1001=%ld reconnects=%ld minlast=%ld "
           "maxlast=%ld gaps=%ld dups=%ld", n_open, n_ever_open, c1001, any1001, rec, minl, maxl, gaps, dups);
  if (force || strcmp(line, prev)) {
    printf("%s %s\n", force ? "DONE" : "STATUS", line);
    fflush(stdout);
    snprintf(prev, sizeof prev, "%s", line);
  }
}

static void chat_stdin(void) {
  static char buf[256]; static size_t len;
  ssize_t n = read(0, buf + len, sizeof buf - 1 - len);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { stdin_eof = 1; return; }
  if (n < 0) return;
  len += (size_t)n; buf[len] = 0;
  char *nl;
  while ((nl = strchr(buf, '\n'))) {
    *nl = 0;
    if (!strncmp(buf, "end ", 4)) end_id = atol(buf + 4);
    len -= (size_t)(nl + 1 - buf);
    memmove(buf, nl + 1, len + 1);
  }
}

static int run_chat(void) {
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  int64_t last_status = 0;
  for (;;) {
    open_due(o_conns);
    struct epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, 5);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u32 == UINT32_MAX) { chat_stdin(); continue; }
      conn_t *c = &cs[evs[i].data.u32];
      if (c->fd >= 0) on_event(c, evs[i].events);
    }
    if (MONO() - last_status > 20000000) { chat_status(0); last_status = MONO(); }
    if (stdin_eof) break; /* whoever drives us gave up (or forgot "end K"): report what we have */
    if (end_id >= 0) {
      int all = 1;
      for (int i = 0; i < o_conns && all; i++) all = cs[i].last >= end_id && cs[i].state == S_OPEN;
      if (all) break;
    }
  }
  finished = 1;
  chat_status(1);
  long bad = 0, no1001 = 0, gaps = 0, dups = 0;
  for (int i = 0; i < o_conns; i++) {
    bad += cs[i].gaps || cs[i].dups;
    no1001 += cs[i].closes1001 == 0;
    gaps += cs[i].gaps; dups += cs[i].dups;
  }
  printf("RESULT {\"mode\":\"chat\",\"clients\":%d,\"last\":%ld,\"clients_with_gaps_or_dups\":%ld,\"gaps\":%ld,"
         "\"dups\":%ld,\"clients_without_1001\":%ld}\n", o_conns, end_id, bad, gaps, dups, no1001);
  fflush(stdout);
  return !stdin_eof && bad == 0 && (!o_want1001 || no1001 == 0) ? 0 : 1;
}

static void usage(void) {
  fprintf(stderr, "usage: wsload echo|fanout|chat [--host IP] [--port P] [--path P] [--pub-path P] [--conns N]\n"
                  "       [--duration S] [--size B] [--rate R] [--timeout S] [--drain S] [--par N] [--inflight N] [--label L] [--want-1001]\n"
                  "       [--trace FILE]  (fanout: one line per delivery, \"message subscriber ms\", subscribers 0..C-1)\n");
}

int main(int argc, char **argv) {
  if (argc < 2) { usage(); return 2; }
  if (!strcmp(argv[1], "echo")) o_mode = M_ECHO;
  else if (!strcmp(argv[1], "fanout")) { o_mode = M_FANOUT; o_path = "/sub"; }
  else if (!strcmp(argv[1], "chat")) { o_mode = M_CHAT; o_path = "/ws?since=%s"; }
  else if (!strcmp(argv[1], "--help")) { usage(); return 0; }
  else { usage(); return 2; }
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--want-1001")) { o_want1001 = 1; continue; }
    if (!v) { usage(); return 2; }
    i++;
    if (!strcmp(a, "--host")) o_host = v;
    else if (!strcmp(a, "--port")) o_port = atoi(v);
    else if (!strcmp(a, "--path")) o_path = v;
    else if (!strcmp(a, "--pub-path")) o_pub = v;
    else if (!strcmp(a, "--conns")) o_conns = atoi(v);
    else if (!strcmp(a, "--duration")) o_dur = atof(v);
    else if (!strcmp(a, "--size")) o_size = atoi(v);
    else if (!strcmp(a, "--rate")) o_rate = atof(v);
    else if (!strcmp(a, "--timeout")) o_timeout = atof(v);
    else if (!strcmp(a, "--drain")) o_drain = atof(v);
    else if (!strcmp(a, "--par")) o_par = atoi(v);
    else if (!strcmp(a, "--inflight")) o_inflight = atoi(v);
    else if (!strcmp(a, "--label")) o_label = v;
    else if (!strcmp(a, "--trace")) o_trace = v;
    else { usage(); return 2; }
  }
  if (o_conns < 1 || o_dur <= 0 || o_rate <= 0 || o_size < 1 || o_par < 1 || o_inflight < 1) { usage(); return 2; }
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)o_conns + 32) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)o_conns + 32) { fprintf(stderr, "wsload: fd limit %lu too low\n", (unsigned long)rl.rlim_cur); return 1; }
  }
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET; addr.sin_port = htons((uint16_t)o_port);
  if (inet_pton(AF_INET, o_host, &addr.sin_addr) != 1) { fprintf(stderr, "wsload: --host must be an IPv4 address\n"); return 2; }
  srand((unsigned)(REAL() ^ getpid()));
  ncs = o_conns + 1;
  cs = calloc((size_t)ncs, sizeof *cs);
  if (!cs) die("calloc");
  for (int i = 0; i < ncs; i++) { cs[i].fd = -1; cs[i].due = i < o_conns ? 0 : INT64_MAX; }
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  if (o_mode == M_CHAT) {
    struct epoll_event e = { .events = EPOLLIN, .data.u32 = UINT32_MAX };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &e) < 0) die("epoll_ctl stdin");
    setvbuf(stdout, NULL, _IOLBF, 0);
  }
  if (o_mode == M_ECHO) return run_echo();
  if (o_mode == M_FANOUT && o_trace && !(trace_f = fopen(o_trace, "w"))) die(o_trace);
  if (o_mode == M_FANOUT) {
    int r = run_fanout();
    if (trace_f) fclose(trace_f);
    return r;
  }
  return run_chat();
}
