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

#define PROG "xfanout"

#define MAXH 8
static const char *o_hosts = "127.0.0.1:8090", *o_sub = "/events", *o_pub = "/messages";
static int o_clients = 1000, o_par = 100, o_quiet = 0, o_raw = 0, o_sio = 0;
static double o_rate = 20, o_dur = 10, o_ctimeout = 30, o_drain = 3, o_settle = 0.5;
static const char *o_label = "", *o_dump = NULL;   /* --dump FILE: one line per message */

/* ---------------- state (the run's counters are fanout_core.h's) ---------------- */
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

static struct sockaddr_in addrs[MAXH];
static char hostnames[MAXH][64];
static int nh, overlapping;
static float *lat_x; static long nlat_x;   /* ms: arrival, cross-host only */
static float *kmax; static int64_t *ksent;   /* per message: the slowest delivery (ms), the send time */


#include "../chat/fanout_core.h"

/* ---------------- the streams: SSE, or Socket.IO ---------------- */
static const struct sockaddr_in *client_addr(client_t *c) { return &addrs[c->h]; }

static int open_request(client_t *c, char *req, size_t size) {
  char lei[96] = "";
  if (c->ok && c->lastid[0]) snprintf(lei, sizeof lei, "Last-Event-ID: %s\r\n", c->lastid);
  return o_sio ? snprintf(req, size, "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bW9vbmZvcmtiZW5jaDEyMw==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n", hostnames[c->h])
               : snprintf(req, size, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n%s\r\n",
                          o_sub, hostnames[c->h], lei);
}

static int head_accepted(const char *head) {
  if (o_sio) return !strncmp(head, "HTTP/1.1 101 ", 13);
  return !strncmp(head, "HTTP/1.1 200 ", 13) || !strncmp(head, "HTTP/1.0 200 ", 13);
}

static int ready_at_head(void) { return !o_sio; }   /* Socket.IO: once the namespace is joined */

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
  if (o_sio) ws_feed(c, d, n, ts_a, ts_r);
  else sse_body_feed(c, d, n, ts_a, ts_r);
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

static int post_accepted(int status) { return status >= 200 && status < 300; }

#include "xfanout_report.h"

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

static int own_option(const char *a, const char *v) {
  if (!strcmp(a, "--hosts")) o_hosts = v;
  else if (!strcmp(a, "--sub-path")) o_sub = v;
  else if (!strcmp(a, "--pub-path")) o_pub = v;
  else if (!strcmp(a, "--pub-format")) o_raw = !strcmp(v, "raw");
  else if (!strcmp(a, "--proto")) o_sio = !strcmp(v, "sio");
  else if (!strcmp(a, "--dump")) o_dump = v;
  else return 0;
  return 1;
}

int main(int argc, char **argv) {
  int r = parse_args(argc, argv,
      "usage: xfanout [--hosts IP:PORT,IP:PORT..] [--sub-path /events] [--pub-path /messages]\n"
      "               [--pub-format json|raw] [--proto sse|sio] [--clients C] [--rate R] [--duration D] [--connect-parallel N]\n"
      "              [--connect-timeout S] [--drain S] [--settle S] [--label X] [--quiet]\n"
      "              [--dump FILE]  (per message: k, seconds after the first send, slowest delivery ms)\n"
      "              [--reconnect 1|0]  (reconnect a closed stream with Last-Event-ID, default 1)");
  if (r) return r < 0 ? 0 : r;
  if (raise_fd_limit() < 0) return 1;
  if (parse_hosts(o_hosts) < 0) { fprintf(stderr, "xfanout: --hosts takes IPv4:PORT[,IPv4:PORT..] (at most %d)\n", MAXH); return 2; }
  run_setup();
  lat_x = malloc(sizeof(float) * (size_t)o_clients * nmsg);
  kmax = calloc(nmsg, sizeof *kmax);
  ksent = calloc(nmsg, sizeof *ksent);
  if (!kmax || !ksent || !lat_x) die("malloc");
  for (int i = 0; i < o_clients; i++) { cl[i].fd = -1; cl[i].lastk = -1; cl[i].h = i % nh; cl[i].seen = calloc(nmsg, 1);
    cl[i].order = malloc(sizeof(int) * nmsg); if (!cl[i].seen || !cl[i].order) die("malloc"); }
  t_start_mono = now_mono();
  LOG("run %.*s: opening %d SSE clients to %s%s", marklen - 7, mark + 6, o_clients, o_hosts, o_sub);
  run();
}
