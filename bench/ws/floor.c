/* bench/ws/floor.c -- the floor of the WebSocket benches: the least a server can do per message.
 *
 * Not a contestant and not a server anyone should use: W forked processes share one listening socket,
 * each with an epoll loop that answers the upgrade (any request on the connection's first read gets
 * the 101). Then, per readable socket, one read(2) and:
 *   - GET /sub...: the connection is a subscriber of this process;
 *   - GET /pub...: every whole message is passed to the other processes (one datagram each on a Unix
 *     socket made before the fork) and written to this process's subscribers, the frame built once,
 *     one write(2) each, in the order they came;
 *   - any other path: every whole masked frame unmasked into one reply buffer, one write(2).
 * No Lua, no event library, no limits, no close handshake, no UTF-8 check, no timers. What it reaches
 * on this machine is what the kernel's loopback TCP allows any server with one read and one send per
 * message; a contestant's distance from it is its own cost.
 *
 *   cc -O2 -o floor floor.c -lcrypto ; ./floor PORT WORKERS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum { BUF = 65536 };

enum { K_ECHO, K_SUB, K_PUB };

typedef struct {
  int open; /* the upgrade was answered */
  int kind, fd;
  size_t inlen;
  uint8_t in[BUF];
} conn_t;

static int answer_upgrade(int fd, conn_t *c) {
  c->in[c->inlen < BUF ? c->inlen : BUF - 1] = 0;
  if (!strstr((char *)c->in, "\r\n\r\n")) return 0; /* more to come */
  const char *k = strcasestr((char *)c->in, "\r\nSec-WebSocket-Key:");
  if (!k) return -1;
  k += 20;
  while (*k == ' ') k++;
  size_t kl = strcspn(k, "\r\n ");
  char key[128];
  if (kl > 64) return -1;
  memcpy(key, k, kl);
  memcpy(key + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
  unsigned char sha[SHA_DIGEST_LENGTH];
  SHA1((unsigned char *)key, kl + 36, sha);
  unsigned char acc[64];
  EVP_EncodeBlock(acc, sha, SHA_DIGEST_LENGTH);
  char out[256];
  int n = snprintf(out, sizeof out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", acc);
  if (write(fd, out, (size_t)n) != n) return -1;
  c->open = 1;
  c->kind = !strncmp((char *)c->in, "GET /sub", 8) ? K_SUB : !strncmp((char *)c->in, "GET /pub", 8) ? K_PUB : K_ECHO;
  c->inlen = 0;
  return 0;
}

/* Every whole frame in c->in, unmasked, into out; returns the bytes written to out. */
static size_t echo_frames(conn_t *c, uint8_t *out) {
  size_t off = 0, o = 0;
  while (c->inlen - off >= 6) {
    uint8_t *b = c->in + off;
    uint64_t len = b[1] & 0x7f;
    size_t hl = 2;
    if (len == 126) { len = (uint64_t)b[2] << 8 | b[3]; hl = 4; }
    else if (len == 127) break; /* the bench's messages are small */
    if (c->inlen - off < hl + 4 + len) break;
    const uint8_t *mask = b + hl, *p = b + hl + 4;
    out[o] = b[0];
    if (len < 126) { out[o + 1] = (uint8_t)len; o += 2; }
    else { out[o + 1] = 126; out[o + 2] = (uint8_t)(len >> 8); out[o + 3] = (uint8_t)len; o += 4; }
    for (uint64_t i = 0; i < len; i++) out[o + i] = p[i] ^ mask[i & 3];
    o += len;
    off += hl + 4 + len;
  }
  memmove(c->in, c->in + off, c->inlen - off);
  c->inlen -= off;
  return o;
}

static int nproc, me, (*peers)[2]; /* peers[i][0]: process i reads its datagrams there */
static conn_t **subs;
static size_t nsubs, capsubs;
static conn_t peer_mark; /* epoll's data for this process's datagram socket */

/* One message (payload p, n bytes) to every subscriber of this process: the frame built once. */
static void fan_out(const uint8_t *p, size_t n) {
  static uint8_t f[BUF + 16];
  size_t hl = 2;
  f[0] = 0x81;
  if (n < 126) f[1] = (uint8_t)n;
  else { f[1] = 126; f[2] = (uint8_t)(n >> 8); f[3] = (uint8_t)n; hl = 4; }
  memcpy(f + hl, p, n);
  for (size_t i = 0; i < nsubs; i++)
    if (subs[i] && write(subs[i]->fd, f, hl + n) < 0 && errno != EAGAIN) subs[i] = NULL;
}

static void serve(int lfd) {
  int ep = epoll_create1(0);
  struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL };
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  struct epoll_event pev = { .events = EPOLLIN, .data.ptr = &peer_mark };
  epoll_ctl(ep, EPOLL_CTL_ADD, peers[me][0], &pev);
  static uint8_t out[BUF + 64];
  for (;;) {
    struct epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (!c) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c = calloc(1, sizeof *c);
        c->fd = fd;
        struct epoll_event cev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        continue;
      }
      if (c == &peer_mark) {
        ssize_t r = recv(peers[me][0], out, BUF, MSG_DONTWAIT);
        if (r > 0) fan_out(out, (size_t)r);
        continue;
      }
      int fd = c->fd;
      ssize_t r = read(fd, c->in + c->inlen, BUF - 1 - c->inlen);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        for (size_t k = 0; k < nsubs; k++) if (subs[k] == c) subs[k] = NULL;
        close(fd); free(c);
        continue;
      }
      c->inlen += (size_t)r;
      if (!c->open) {
        if (answer_upgrade(fd, c) < 0) { close(fd); free(c); continue; }
        if (c->kind == K_SUB) {
          if (nsubs == capsubs && !(subs = realloc(subs, (capsubs = capsubs ? capsubs * 2 : 1024) * sizeof *subs)))
            abort();
          subs[nsubs++] = c;
        }
        continue;
      }
      size_t o = echo_frames(c, out);
      if (c->kind == K_SUB) continue;
      if (c->kind == K_PUB) { /* each whole message: to the other processes, then to our own */
        for (size_t off = 0; off < o;) {
          size_t n = out[off + 1] & 0x7f, hl = 2;
          if (n == 126) { n = (size_t)out[off + 2] << 8 | out[off + 3]; hl = 4; }
          if ((out[off] & 0x0f) == 1) {
            for (int k = 0; k < nproc; k++)
              if (k != me) send(peers[k][1], out + off + hl, n, MSG_DONTWAIT);
            fan_out(out + off + hl, n);
          }
          off += hl + n;
        }
        continue;
      }
      if (o && write(fd, out, o) < 0 && errno != EAGAIN) { close(fd); free(c); }
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: floor PORT WORKERS\n"); return 2; }
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) { perror("floor"); return 1; }
  nproc = atoi(argv[2]);
  if (nproc < 1) nproc = 1;
  signal(SIGPIPE, SIG_IGN);
  peers = calloc((size_t)nproc, sizeof *peers);
  for (int i = 0; i < nproc; i++)
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, peers[i]) < 0) { perror("floor"); return 1; }
  for (int i = 0; i < nproc; i++)
    if (fork() == 0) { prctl(PR_SET_PDEATHSIG, SIGTERM); me = i; serve(lfd); _exit(0); }
  while (wait(NULL) > 0) {}
  return 0;
}
