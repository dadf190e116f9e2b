/* reuseport.h -- --reuseport: one listening socket per worker slot, and where new connections go. */
#ifndef MOONFORK_REUSEPORT_H
#define MOONFORK_REUSEPORT_H

#include <stdint.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <uv.h>

/* Called with a connection the master accepted from a parked socket (see reuseport.c): the master hands
 * it to a worker, or closes it. */
typedef void (*reuseport_handoff_cb)(int fd);

/* Takes the first socket (bound, listening, SO_REUSEPORT set: slot 0's); its address is where the others
 * bind. */
int reuseport_init(uv_loop_t *loop, int first_fd, reuseport_handoff_cb handoff, char *err, size_t errlen);
/* Slot `index`'s socket (0-based), made on first use; -1 with err set when it cannot be. */
int reuseport_fd(int index, char *err, size_t errlen);
/* Sends new connections to the sockets of the `n` slots listed (the ones with a ready worker); `active`
 * slots are in use, and the sockets past them are parked: nothing is sent there, and what still arrives
 * is accepted and handed off. */
void reuseport_steer(const int *slots, int n, int active);
/* How many sockets there are, and how many connections the master took from parked ones. */
void reuseport_stats(int *sockets, uint64_t *handed_off);
/* Closes every socket (shutdown: the workers keep their copies until they have drained). */
void reuseport_close_all(void);
/* Builds the steering program for `slots` into prog (room for REUSEPORT_PROG_MAX(n) instructions); returns
 * its length. Exposed for the unit test. */
#define REUSEPORT_PROG_MAX(n) (3 + 2 * (n))
int reuseport_program(const int *slots, int n, struct sock_filter *prog);

#endif
