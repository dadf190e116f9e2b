/* bench/chat/fanout_core.h: what the fan-out load generators share (bench/chat/fanout.c and
 * bench/cross/xfanout.c): the epoll loop and its timer, the stream clients (connect, read with the
 * kernel's receive timestamps, the response head, chunked and SSE decoding), the publisher's answers,
 * the run's phases (connect, settle, publish, drain) and the common part of the report.
 *
 * One translation unit: the including file defines PROG (its name, for messages), its options (o_*),
 * the client states (C_*), client_t and pub_t first (see fanout.c), includes this, and defines the
 * hooks declared below. */

#define NPUB 512   /* publisher connections: open loop, a POST never waits for an earlier one */
static client_t *cl;
static pub_t pubs[NPUB];
static int npub;
static int nmsg, ep, tfd;
static char mark[64]; static int marklen;
static int connected, connecting, next_open, conn_errors, non200, dropped, measuring, connected_at_start;
static int o_reconnect = 1, finishing, reconnects, reconnect_errors;
static long received, duplicates, out_of_order, foreign;
static float *lat_a, *lat_r; static long nlat;   /* ms */
static int64_t first_send, last_delivery_mono, last_post_done_mono;
static int sent, post_ok, post_fail, post_skipped;
static float *post_lat; static int npost_lat;
static int64_t t_start_mono;

#define LOG(...) do { if (!o_quiet) { fprintf(stderr, PROG ": " __VA_ARGS__); fputc('\n', stderr); } } while (0)

/* The hooks: what the including file decides. */
static const struct sockaddr_in *client_addr(client_t *c);       /* where client c connects */
static int open_request(client_t *c, char *req, size_t size);    /* the request that opens its stream */
static int head_accepted(const char *head);                      /* the answer's status line opens it */
static int ready_at_head(void);                                  /* a client counts as connected then */
static void on_event(client_t *c, const char *b, const char *e, int64_t ts_a, int64_t ts_r);
static void body_feed(client_t *c, const char *d, size_t n, int64_t ts_a, int64_t ts_r);
static int post_accepted(int status);                            /* a POST's answer counts as published */
static void post(int k);
static void finish(void);
static int own_option(const char *a, const char *v);             /* 1 when a is one of the file's own */

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
static void die(const char *m) { perror(m); exit(1); }

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
  int r = connect(c->fd, (const struct sockaddr *)client_addr(c), sizeof(struct sockaddr_in));
  if (r < 0 && errno != EINPROGRESS) { conn_errors++; client_close(c, c->ok); return; }
  ep_add(c->fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP, c - cl);
}

static void open_next(void) {
  while (connecting < o_par && next_open < o_clients) client_connect(&cl[next_open++]);
}

static void start_measuring(void);

static void client_ready(client_t *c) {
  if (c->ok) return;
  c->ok = 1;
  connecting--; connected++;
  open_next();
  if (connected == o_clients) start_measuring();
}

/* ---------------- SSE parsing ---------------- */
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

/* An SSE body, chunked or not. */
static void sse_body_feed(client_t *c, const char *d, size_t n, int64_t ts_a, int64_t ts_r) {
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

/* The connect finished: send the request that opens the stream. */
static void client_opened(client_t *c, uint32_t ev) {
  int err = 0; socklen_t l = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
  if (err) { conn_errors++; client_close(c, c->ok); open_next(); return; }
  if (!(ev & EPOLLOUT)) return;
  char req[512];
  int n = open_request(c, req, sizeof req);
  if (write(c->fd, req, n) != n) { conn_errors++; client_close(c, c->ok); open_next(); return; }
  struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)(c - cl) };
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
  c->state = C_HEADERS;
}

/* Takes the response head from d (what is left is body); 0 while it is incomplete, -1 when the client
 * was closed, 1 when the stream is open. */
static int client_head(client_t *c, const char **d, size_t *len) {
  size_t take = *len;
  if (c->hlen + take > sizeof c->hbuf - 1) take = sizeof c->hbuf - 1 - c->hlen;
  memcpy(c->hbuf + c->hlen, *d, take);
  int old = c->hlen;
  c->hlen += take;
  c->hbuf[c->hlen] = 0;
  char *e = strstr(c->hbuf, "\r\n\r\n");
  if (!e) { if (c->hlen >= (int)sizeof c->hbuf - 1) { conn_errors++; client_close(c, 0); open_next(); return -1; } return 0; }
  size_t used = (e + 4 - c->hbuf) - old;
  *d += used; *len -= used;
  *e = 0;
  if (!head_accepted(c->hbuf)) { non200++; client_close(c, c->ok); open_next(); return -1; }
  c->chunked = strcasestr(c->hbuf, "\ntransfer-encoding: chunked") != NULL ||
               strcasestr(c->hbuf, "\ntransfer-encoding:chunked") != NULL;
  c->state = C_BODY;
  if (ready_at_head()) client_ready(c);
  return 1;
}

static void client_io(client_t *c, uint32_t ev) {
  if (c->state == C_CONNECTING) { client_opened(c, ev); return; }
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
      int r = client_head(c, &d, &len);
      if (r < 0) return;
      if (r == 0) continue;
    }
    if (len && c->state == C_BODY) body_feed(c, d, len, ts_a, ts_r);
    if (c->state != C_BODY) return;
    if ((size_t)n < sizeof rbuf) return;   /* drained (edge cases: the next epoll round reads the rest) */
  }
}

/* ---------------- publisher ---------------- */
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
    if (post_accepted(status)) { post_ok++; post_lat[npost_lat++] = (float)(last_post_done_mono - p->t0) / 1e6f; }
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

/* The command line: the options both take here, the file's own through own_option. 0 to run, -1 after
 * --help (exit 0), 2 for a bad one (said). */
static int parse_args(int argc, char **argv, const char *usage) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { puts(usage); return -1; }
    if (!strcmp(a, "--quiet")) { o_quiet = 1; continue; }
    if (i + 1 >= argc) { fprintf(stderr, PROG ": %s needs a value\n", a); return 2; }
    const char *v = argv[++i];
    if (!strcmp(a, "--clients")) o_clients = atoi(v);
    else if (!strcmp(a, "--rate")) o_rate = atof(v);
    else if (!strcmp(a, "--duration")) o_dur = atof(v);
    else if (!strcmp(a, "--connect-parallel")) o_par = atoi(v);
    else if (!strcmp(a, "--connect-timeout")) o_ctimeout = atof(v);
    else if (!strcmp(a, "--drain")) o_drain = atof(v);
    else if (!strcmp(a, "--settle")) o_settle = atof(v);
    else if (!strcmp(a, "--label")) o_label = v;
    else if (!strcmp(a, "--reconnect")) o_reconnect = atoi(v);
    else if (!own_option(a, v)) { fprintf(stderr, PROG ": unknown option %s\n", a); return 2; }
  }
  if (o_clients < 1 || o_rate <= 0 || o_dur <= 0) { fprintf(stderr, PROG ": bad clients/rate/duration\n"); return 2; }
  nmsg = (int)lround(o_rate * o_dur);
  if (nmsg < 1) nmsg = 1;
  return 0;
}

/* The run's mark (what tells its messages from others') and the memory every run needs. */
static void run_setup(void) {
  srand((unsigned)(now_rt() ^ getpid()));
  marklen = snprintf(mark, sizeof mark, "bench:%06x:", rand() & 0xffffff);
  cl = calloc(o_clients, sizeof *cl);
  lat_a = malloc(sizeof(float) * (size_t)o_clients * nmsg);
  lat_r = malloc(sizeof(float) * (size_t)o_clients * nmsg);
  post_lat = malloc(sizeof(float) * nmsg);
  if (!cl || !lat_a || !lat_r || !post_lat) die("malloc");
  for (int i = 0; i < NPUB; i++) pubs[i].fd = -1;
}

/* Room for every client and publisher connection; 0, or -1 (said) when the limit cannot be raised. */
static int raise_fd_limit(void) {
  struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)o_clients + NPUB + 16) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)o_clients + NPUB + 16) { fprintf(stderr, PROG ": fd limit %lu too low\n", (unsigned long)rl.rlim_cur); return -1; }
  }
  return 0;
}

/* The run, from the first connect to finish() (which exits). */
static void run(void) {
  ep = epoll_create1(EPOLL_CLOEXEC);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  ep_add(tfd, EPOLLIN, INT32_MIN);
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

/* ---------------- report ---------------- */
static int cmpf(const void *a, const void *b) { float x = *(const float *)a, y = *(const float *)b; return x < y ? -1 : x > y; }
static double pct(float *s, long n, double p) {
  if (!n) return NAN;
  long i = (long)ceil(p / 100 * n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return s[i];
}
static void jnum(FILE *f, const char *k, double v) {
  if (isnan(v)) fprintf(f, ",\"%s\":null", k); else fprintf(f, ",\"%s\":%.3f", k, v);
}

typedef struct {
  double cpu, window, mean;
  long expected, lost, dps;
  int minc, maxc;
} report_t;

/* The run's totals; sorts the latencies. */
static void report_prepare(report_t *r) {
  struct rusage ru; getrusage(RUSAGE_SELF, &ru);
  r->cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  qsort(lat_a, nlat, sizeof *lat_a, cmpf);
  qsort(lat_r, nlat, sizeof *lat_r, cmpf);
  qsort(post_lat, npost_lat, sizeof *post_lat, cmpf);
  r->expected = (long)post_ok * connected_at_start;
  r->lost = r->expected > received ? r->expected - received : 0;
  r->window = (last_delivery_mono - first_send) / 1e9;
  r->dps = r->window > 0 ? lround(received / r->window) : 0;
  r->minc = -1; r->maxc = 0;
  for (int i = 0; i < o_clients; i++) if (cl[i].ok) {
    if (r->minc < 0 || cl[i].count < r->minc) r->minc = cl[i].count;
    if (cl[i].count > r->maxc) r->maxc = cl[i].count;
  }
  if (r->minc < 0) r->minc = 0;
  double mean = 0; for (long i = 0; i < nlat; i++) mean += lat_a[i]; r->mean = nlat ? mean / nlat : NAN;
}

/* The summary's first lines, up to the arrival latencies; ok: what a published POST got ("201"). */
static void report_head(const report_t *r, const char *ok) {
  printf("clients %d/%d connected (conn errors %d, non-200 %d, streams closed during run %d)\n",
         connected_at_start, o_clients, conn_errors, non200, dropped);
  printf("messages sent %d (%s: %d, failed: %d, not sent: publisher saturated %d) at %g/s for %g s\n", sent, ok,
         post_ok, post_fail, post_skipped, o_rate, o_dur);
  printf("deliveries expected %ld, received %ld, lost %ld, duplicates %ld, out-of-order %ld", r->expected, received,
         r->lost, duplicates, out_of_order);
  if (foreign) printf(", other events %ld", foreign);
  if (reconnects) printf(", reconnects %d", reconnects);
  printf("\ndeliveries/s %ld (window %.2f s); per client min %d max %d\n", r->dps, r->window, r->minc, r->maxc);
  printf("latency ms (arrival): p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n", pct(lat_a, nlat, 50),
         pct(lat_a, nlat, 90), pct(lat_a, nlat, 99), nlat ? lat_a[nlat - 1] : NAN, r->mean);
}

/* The summary's last lines: read latencies, POST round trips, the load generator's CPU. */
static void report_tail(const report_t *r) {
  printf("latency ms (read):    p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", pct(lat_r, nlat, 50),
         pct(lat_r, nlat, 90), pct(lat_r, nlat, 99), nlat ? lat_r[nlat - 1] : NAN);
  printf("POST round trip ms: p50 %.3f  p99 %.3f; load generator CPU %.2f s\n", pct(post_lat, npost_lat, 50),
         pct(post_lat, npost_lat, 99), r->cpu);
}

/* The RESULT line up to the arrival latencies; the including file may add fields before result_tail. */
static void result_head(const report_t *r) {
  printf("RESULT {\"label\":\"%s\",\"clients\":%d,\"connected\":%d,\"conn_errors\":%d,\"non_200\":%d,"
         "\"dropped_streams\":%d,\"reconnects\":%d,\"rate\":%g,\"duration\":%g,\"sent\":%d,\"post_ok\":%d,\"post_fail\":%d,\"post_skipped\":%d,"
         "\"expected\":%ld,\"received\":%ld,\"lost\":%ld,\"duplicates\":%ld,\"out_of_order\":%ld,"
         "\"deliveries_per_s\":%ld",
         o_label, o_clients, connected_at_start, conn_errors, non200, dropped, reconnects, o_rate, o_dur, sent, post_ok, post_fail, post_skipped,
         r->expected, received, r->lost, duplicates, out_of_order, r->dps);
  jnum(stdout, "p50_ms", pct(lat_a, nlat, 50)); jnum(stdout, "p90_ms", pct(lat_a, nlat, 90));
  jnum(stdout, "p99_ms", pct(lat_a, nlat, 99)); jnum(stdout, "max_ms", nlat ? lat_a[nlat - 1] : NAN);
  jnum(stdout, "mean_ms", r->mean);
}

static void result_tail(const report_t *r) {
  jnum(stdout, "read_p50_ms", pct(lat_r, nlat, 50)); jnum(stdout, "read_p99_ms", pct(lat_r, nlat, 99));
  jnum(stdout, "read_max_ms", nlat ? lat_r[nlat - 1] : NAN);
  jnum(stdout, "post_p50_ms", pct(post_lat, npost_lat, 50)); jnum(stdout, "post_p99_ms", pct(post_lat, npost_lat, 99));
  printf(",\"per_client_min\":%d,\"per_client_max\":%d,\"loadgen_cpu_s\":%.3f}\n", r->minc, r->maxc, r->cpu);
  fflush(stdout);
}
