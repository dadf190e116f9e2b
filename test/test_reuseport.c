/* test_reuseport.c -- the --reuseport steering program: it picks slots[random % n], and the kernel
 * accepts it on a reuseport socket. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <unistd.h>

#include "../server/reuseport.h"
#include "test.h"

/* Runs the program with `rnd` as the random number, for the instructions reuseport_program emits. */
static int64_t run(const struct sock_filter *p, int len, uint32_t rnd) {
  uint32_t a = 0;
  for (int pc = 0; pc < len; pc++) {
    const struct sock_filter *i = &p[pc];
    switch (i->code) {
      case BPF_LD | BPF_W | BPF_ABS:
        if (i->k != (uint32_t)(SKF_AD_OFF + SKF_AD_RANDOM)) return -1;
        a = rnd;
        break;
      case BPF_ALU | BPF_MOD | BPF_K:
        if (i->k == 0) return -1;
        a %= i->k;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K: pc += a == i->k ? i->jt : i->jf; break;
      case BPF_RET | BPF_K: return i->k;
      default: return -1;
    }
  }
  return -1; /* fell off the end */
}

static void check_slots(const int *slots, int n) {
  struct sock_filter prog[REUSEPORT_PROG_MAX(16)];
  int len = reuseport_program(slots, n, prog);
  CHECK(len == REUSEPORT_PROG_MAX(n));
  for (uint32_t r = 0; r < 200; r++) CHECK(run(prog, len, r) == slots[r % (uint32_t)n]);
  CHECK(run(prog, len, 0xffffffffu) == slots[0xffffffffu % (uint32_t)n]);
}

int main(void) {
  check_slots((int[]){0}, 1);
  check_slots((int[]){1}, 1);
  check_slots((int[]){0, 1, 2}, 3);
  check_slots((int[]){2, 5, 7, 9}, 4);

  /* the kernel takes it */
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(fd >= 0);
  CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  CHECK(listen(fd, 8) == 0);
  struct sock_filter prog[REUSEPORT_PROG_MAX(3)];
  struct sock_fprog fp = {.len = (unsigned short)reuseport_program((int[]){0, 1, 2}, 3, prog), .filter = prog};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof fp) == 0);
  close(fd);
  TEST_DONE();
}
