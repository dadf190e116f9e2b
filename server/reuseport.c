/* reuseport.c -- --reuseport: a listening socket per worker slot, and the choice of socket for each
 * new connection.
 *
 * With one shared socket every worker sleeps on the same queue and each new connection wakes them all
 * (http.c then takes turns through the scoreboard). With SO_REUSEPORT each slot has a socket of its
 * own, bound to the same address, and the kernel picks one socket per connection: no shared queue, no
 * wake-ups for nothing.
 *
 * The master owns the sockets and keeps them across reloads and respawns: a slot's new worker inherits
 * the same socket, with whatever connections wait in its queue. Left alone, the kernel would spread
 * connections by a hash over every socket of the group, including the socket of a slot whose worker is
 * starting or dead; and closing a socket resets the connections in its queue (LESSONS.md). So a classic
 * BPF program (SO_ATTACH_REUSEPORT_CBPF) makes the choice instead: at random among the slots that have a
 * ready worker. No socket is closed before shutdown: a scale-down parks the removed slots' sockets (the
 * program leaves them out), and the master accepts what still arrives there (a handshake that began
 * before the program changed) and hands it to a worker over its control channel. A scale-up takes a
 * parked socket back. The kernel numbers a group's sockets in the order they began listening, which is
 * slot order here, since none leaves the group early. */
#define _GNU_SOURCE /* accept4 */
#include "reuseport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define REUSEPORT_ACCEPTS_PER_WAKE 64

static struct {
  uv_loop_t *loop;
  reuseport_handoff_cb handoff;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  int *fds;
  uv_poll_t **park; /* per socket: polled while parked, else NULL */
  int n, cap;
  int steer_failed;
  uint64_t handed_off;
} reuseport;

int reuseport_program(const int *slots, int n, struct sock_filter *prog) {
  int k = 0;
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM);
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, (uint32_t)n);
  for (int j = 0; j < n; j++) {
    prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)j, 0, 1);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, (uint32_t)slots[j]);
  }
  prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, (uint32_t)slots[0]);
  return k;
}

static int grow(int need) {
  if (need <= reuseport.cap) return 0;
  int cap = reuseport.cap ? reuseport.cap * 2 : 8;
  while (cap < need) cap *= 2;
  int *fds = realloc(reuseport.fds, (size_t)cap * sizeof *fds);
  if (fds == NULL) return -1;
  reuseport.fds = fds;
  uv_poll_t **park = realloc(reuseport.park, (size_t)cap * sizeof *park);
  if (park == NULL) return -1;
  reuseport.park = park;
  for (int i = reuseport.cap; i < cap; i++) reuseport.park[i] = NULL;
  reuseport.cap = cap;
  return 0;
}

int reuseport_init(uv_loop_t *loop, int first_fd, reuseport_handoff_cb handoff, char *err, size_t errlen) {
  reuseport.loop = loop;
  reuseport.handoff = handoff;
  reuseport.addrlen = sizeof reuseport.addr;
  if (getsockname(first_fd, (struct sockaddr *)&reuseport.addr, &reuseport.addrlen) != 0 || grow(1) != 0) {
    snprintf(err, errlen, "--reuseport: %s", strerror(errno));
    return -1;
  }
  int fl = fcntl(first_fd, F_GETFL);
  if (fl >= 0) fcntl(first_fd, F_SETFL, fl | O_NONBLOCK);
  reuseport.fds[0] = first_fd;
  reuseport.n = 1;
  return 0;
}

int reuseport_fd(int index, char *err, size_t errlen) {
  if (grow(index + 1) != 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  while (reuseport.n <= index) {
    int fd = socket(reuseport.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&reuseport.addr, reuseport.addrlen) != 0 || listen(fd, 511) != 0) {
      snprintf(err, errlen, "--reuseport: cannot open the listening socket for worker %d: %s", reuseport.n + 1,
               strerror(errno));
      if (fd >= 0) close(fd);
      return -1;
    }
    reuseport.fds[reuseport.n++] = fd;
  }
  return reuseport.fds[index];
}

/* A parked socket is readable: take what is queued there and hand it on. */
static void on_parked(uv_poll_t *p, int status, int events) {
  int fd = (int)(intptr_t)p->data;
  (void)events;
  if (status < 0) return;
  for (int i = 0; i < REUSEPORT_ACCEPTS_PER_WAKE; i++) {
    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
        mf_log("--reuseport: accept on a parked socket: %s", strerror(errno));
      return;
    }
    reuseport.handed_off++;
    reuseport.handoff(c);
  }
}

static void park(int i, int on) {
  if (on && reuseport.park[i] == NULL) {
    uv_poll_t *p = malloc(sizeof *p);
    if (p == NULL || uv_poll_init(reuseport.loop, p, reuseport.fds[i]) != 0) {
      free(p);
      mf_log("--reuseport: cannot watch the parked socket of worker %d", i + 1);
      return;
    }
    p->data = (void *)(intptr_t)reuseport.fds[i];
    uv_poll_start(p, UV_READABLE, on_parked);
    reuseport.park[i] = p;
  } else if (!on && reuseport.park[i] != NULL) {
    uv_close((uv_handle_t *)reuseport.park[i], (uv_close_cb)free);
    reuseport.park[i] = NULL;
  }
}

void reuseport_steer(const int *slots, int n, int active) {
  for (int i = 0; i < reuseport.n; i++) park(i, i >= active);
  if (n <= 0 || reuseport.n == 0) return;
  if (getenv("MOONFORK_TEST_NO_STEER")) return; /* spec/reuseport_spec.lua: the kernel's hash, parked sockets included */
  struct sock_filter *prog = malloc((size_t)REUSEPORT_PROG_MAX(n) * sizeof *prog);
  if (prog == NULL) return;
  struct sock_fprog fp = {.len = (unsigned short)reuseport_program(slots, n, prog), .filter = prog};
  if (setsockopt(reuseport.fds[0], SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof fp) != 0) {
    if (!reuseport.steer_failed)
      mf_log("--reuseport: cannot attach the steering program (%s): the kernel spreads connections by "
             "hash, and the master hands on those that reach a parked socket", strerror(errno));
    reuseport.steer_failed = 1;
  }
  free(prog);
}

void reuseport_stats(int *sockets, uint64_t *handed_off) {
  *sockets = reuseport.n;
  *handed_off = reuseport.handed_off;
}

void reuseport_close_all(void) {
  for (int i = 0; i < reuseport.n; i++) {
    park(i, 0);
    close(reuseport.fds[i]);
  }
  reuseport.n = 0;
}
