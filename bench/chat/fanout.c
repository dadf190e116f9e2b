/* bench/chat/fanout.c: chat fan-out load generator (one process, one thread, epoll, non-blocking sockets).
 *
 * Opens C SSE clients (GET /events, each on its own new TCP connection, so the server spreads them over
 * its workers) and waits until every one has its HTTP 200 headers. A publisher then POSTs /messages at a
 * fixed rate R for D seconds; each text carries the run id, the message index k and its send time
 * (CLOCK_REALTIME, ns). Each client records, per message, two latencies:
 *   - arrival: the kernel's receive timestamp of the segment (SO_TIMESTAMPNS, stamped when loopback
 *     hands the segment to the client socket) minus the send time. It does not include the time this
 *     process takes to get round to the socket, so it measures the server, not the load generator.
 *   - read:    the time this process read it (clock_gettime after recvmsg) minus the send time.
 * Reports deliveries expected vs received, lost, duplicates, out-of-order (a server id lower than the
 * previous one on the same stream), deliveries/s, latency percentiles, and one line "RESULT {json}".
 *
 * Build: cc -O2 -o fanout fanout.c -lm       (bench/chat/fanout builds it on first use)
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

#define PROG "fanout"

static const char *o_host = "127.0.0.1";
static int o_port = 8090, o_clients = 1000, o_par = 100, o_quiet = 0;
static double o_rate = 20, o_dur = 10, o_ctimeout = 30, o_drain = 3, o_settle = 0.5;
static const char *o_label = "";

/* ---------------- state (the run's counters are fanout_core.h's) ---------------- */
enum { C_CONNECTING, C_HEADERS, C_BODY, C_DEAD };
typedef struct {
  int fd, state, ok, chunked, cstate;   /* cstate: 0 size line, 1 data, 2 CRLF */
  long cremain;
  char craw[64]; int crawlen;           /* partial chunk-size line */
  char hbuf[4096]; int hlen;            /* response head */
  char *sse; size_t slen, scap;         /* decoded SSE text not yet split into events */
  long lastid;
  uint8_t *seen;
  int count;
  int reconnects;
} client_t;

typedef struct {
  int fd, busy, k;
  int64_t t0;
  char buf[4096]; int len;
} pub_t;

static struct sockaddr_in addr;


#include "fanout_core.h"

/* ---------------- the chat's streams ---------------- */
static const struct sockaddr_in *client_addr(client_t *c) { (void)c; return &addr; }

static int open_request(client_t *c, char *req, size_t size) {
  char lei[48] = "";
  if (c->ok) snprintf(lei, sizeof lei, "Last-Event-ID: %ld\r\n", c->lastid < 0 ? 0 : c->lastid);
  return snprintf(req, size, "GET /events HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n%s\r\n",
                  o_host, o_port, lei);
}

static int head_accepted(const char *head) {
  return !strncmp(head, "HTTP/1.1 200 ", 13) || !strncmp(head, "HTTP/1.0 200 ", 13);
}

static int ready_at_head(void) { return 1; }

static void body_feed(client_t *c, const char *d, size_t n, int64_t ts_a, int64_t ts_r) {
  sse_body_feed(c, d, n, ts_a, ts_r);
}

static void on_event(client_t *c, const char *b, const char *e, int64_t ts_a, int64_t ts_r) {
  const char *m = memmem(b, e - b, mark, marklen);
  if (!m) { if (memmem(b, e - b, "data:", 5)) foreign++; return; }
  long id = -1;
  const char *il = (e - b >= 3 && !memcmp(b, "id:", 3)) ? b : memmem(b, e - b, "\nid:", 4);
  if (il) { if (il != b) il++; id = strtol(il + 3, NULL, 10); }
  char *q;
  long k = strtol(m + marklen, &q, 10);
  if (*q != ':' || k < 0 || k >= nmsg) { foreign++; return; }
  int64_t t = strtoll(q + 1, NULL, 10);
  if (c->seen[k]) { duplicates++; return; }
  c->seen[k] = 1;
  c->count++;
  received++;
  if (id >= 0) { if (id < c->lastid) out_of_order++; else c->lastid = id; }
  lat_a[nlat] = (float)((ts_a ? ts_a : ts_r) - t) / 1e6f;
  lat_r[nlat] = (float)(ts_r - t) / 1e6f;
  nlat++;
  last_delivery_mono = now_mono();
}

/* ---------------- publisher ---------------- */
static void pub_open(pub_t *p, int i) {
  p->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->fd < 0) die("socket");
  int one = 1;
  setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(p->fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("publisher connect");
  fcntl(p->fd, F_SETFL, O_NONBLOCK);
  ep_add(p->fd, EPOLLIN | EPOLLRDHUP, -1 - (int64_t)i);
  p->busy = 0; p->len = 0;
}

static void post(int k) {
  int i;
  for (i = 0; i < npub && (pubs[i].busy || pubs[i].fd < 0); i++) {}
  if (i == npub) {
    if (npub == NPUB) { for (i = 0; i < npub && pubs[i].busy; i++) {} if (i == npub) { post_skipped++; LOG("POST %d skipped: all %d publisher connections busy", k, NPUB); return; } }
    else i = npub++;
  }
  pub_t *p = &pubs[i];
  if (p->fd < 0) pub_open(p, i);
  char body[256], req[512];
  int64_t t = now_rt();
  int bl = snprintf(body, sizeof body, "{\"user\":\"bench\",\"text\":\"%s%d:%lld:\"}", mark, k, (long long)t);
  int rl = snprintf(req, sizeof req, "POST /messages HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\n\r\n%s", o_host, o_port, bl, body);
  p->busy = 1; p->k = k; p->t0 = now_mono(); p->len = 0;
  sent++;
  if (write(p->fd, req, rl) != rl) { post_fail++; p->busy = 0; close(p->fd); p->fd = -1; LOG("POST %d: write failed", k); }
}

static int post_accepted(int status) { return status == 201; }

static void finish(void) {
  report_t r;
  finishing = 1;
  report_prepare(&r);
  if (!o_quiet) {
    report_head(&r, "201");
    report_tail(&r);
  }
  result_head(&r);
  result_tail(&r);
  exit(0);
}

static int own_option(const char *a, const char *v) {
  if (!strcmp(a, "--host")) o_host = v;
  else if (!strcmp(a, "--port")) o_port = atoi(v);
  else return 0;
  return 1;
}

int main(int argc, char **argv) {
  int r = parse_args(argc, argv,
      "usage: fanout [--host H] [--port P] [--clients C] [--rate R] [--duration D] [--connect-parallel N]\n"
      "              [--connect-timeout S] [--drain S] [--settle S] [--label X] [--quiet]\n"
      "              [--reconnect 1|0]  (reconnect a closed stream with Last-Event-ID, default 1)");
  if (r) return r < 0 ? 0 : r;
  if (raise_fd_limit() < 0) return 1;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET; addr.sin_port = htons(o_port);
  if (inet_pton(AF_INET, o_host, &addr.sin_addr) != 1) { fprintf(stderr, "fanout: host must be an IPv4 address\n"); return 2; }
  run_setup();
  for (int i = 0; i < o_clients; i++) { cl[i].fd = -1; cl[i].lastid = -1; cl[i].seen = calloc(nmsg, 1); }
  t_start_mono = now_mono();
  LOG("run %.*s: opening %d SSE clients to %s:%d", marklen - 7, mark + 6, o_clients, o_host, o_port);
  run();
}
