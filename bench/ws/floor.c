/* bench/ws/floor.c -- the floor of the WebSocket echo bench: the least a server can do per message.
 *
 * Not a contestant and not a server anyone should use: W forked processes share one listening socket,
 * each with an epoll loop that answers the upgrade (any request on the connection's first read gets
 * the 101), and then, per readable socket, one read(2), every whole masked frame unmasked into one
 * reply buffer, one write(2). No Lua, no event library, no limits, no close handshake, no UTF-8 check,
 * no timers. What it reaches on this machine is what the kernel's loopback TCP allows any server with
 * one read and one send per round trip; a contestant's distance from it is its own cost.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum { BUF = 65536 };

typedef struct {
  int open; /* the upgrade was answered */
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

static void serve(int lfd) {
  int ep = epoll_create1(0);
  struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL };
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
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
        c = calloc(1, sizeof *c + sizeof(int));
        memcpy(c + 1, &fd, sizeof fd);
        struct epoll_event cev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        continue;
      }
      int fd;
      memcpy(&fd, c + 1, sizeof fd);
      ssize_t r = read(fd, c->in + c->inlen, BUF - 1 - c->inlen);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        close(fd); free(c);
        continue;
      }
      c->inlen += (size_t)r;
      if (!c->open) {
        if (answer_upgrade(fd, c) < 0) { close(fd); free(c); }
        continue;
      }
      size_t o = echo_frames(c, out);
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
  int w = atoi(argv[2]);
  signal(SIGPIPE, SIG_IGN);
  for (int i = 0; i < w; i++)
    if (fork() == 0) { serve(lfd); _exit(0); }
  while (wait(NULL) > 0) {}
  return 0;
}
