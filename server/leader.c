/* leader.c -- the mesh seen from the master: joining ready workers, and naming the mesh's leader.
 *
 * Workers talk to each other over Unix socketpairs the master makes (mesh.c is the worker's side): each
 * pair is made once, when the later of its two workers becomes ready, and each end goes down one
 * worker's channel with a "peer ID SERIAL" line. Draining workers are not joined.
 *
 * The master also names the mesh's leader, so workers never have to agree on one from partial views
 * (a worker may take requests before all its peer sockets have arrived). Once the first workers are
 * all ready (or 5 s have passed) the oldest ready worker leads; leadership then only moves when the
 * leader dies or is retired, to the oldest ready worker, with a higher epoch. Each worker hears
 * "leader ID SERIAL EPOCH" on its channel, after the peer sockets it was sent.
 *
 * A stream dropped at the mesh's cap (a peer that stopped reading, mesh.c) is made again when the
 * worker that dropped it asks ("repair ID SERIAL"): both workers live, and would otherwise stay
 * without each other for good. Only the dropping side asks, so one pair is made. */
#include "leader.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"

#define LEADER_WAIT_MS 5000 /* a leader is named by then even if some workers are not ready */

static struct {
  child_t *child; /* NULL: none yet, or none could lead */
  long epoch;
  uint64_t started_ms;
} leader;

static int joinable(const child_t *c) {
  return c->state == CHILD_READY && group_child_running(c) && chan_is_open(&c->chan);
}

void leader_init(const group_t *g) { leader.started_ms = uv_now(g->loop); }

/* A socketpair for c and o, an end down each one's channel. */
static void pair(child_t *c, child_t *o) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    mf_log("mesh: socketpair for workers %d and %d: %s", c->id, o->id, strerror(errno));
    return;
  }
  chan_send_fd(&c->chan, &(chan_msg_t){.type = CHAN_PEER, .id = o->id, .serial = o->serial}, sv[0]);
  chan_send_fd(&o->chan, &(chan_msg_t){.type = CHAN_PEER, .id = c->id, .serial = c->serial}, sv[1]);
}

void leader_join(group_t *g, child_t *c) {
  for (child_t *o = g->children; o; o = o->next)
    if (o != c && joinable(o)) pair(c, o);
}

void leader_repair(group_t *g, child_t *c, int id, long serial) {
  if (!joinable(c)) return;
  for (child_t *o = g->children; o; o = o->next) {
    if (o == c || o->id != id || o->serial != serial || !joinable(o)) continue;
    mf_log("mesh: a new stream between workers %d and %d (worker %d's was dropped)", c->id, o->id, c->id);
    pair(c, o);
    return;
  }
}

void leader_tell(child_t *c) {
  if (leader.child == NULL) return;
  chan_send(&c->chan, &(chan_msg_t){.type = CHAN_LEADER, .id = leader.child->id, .serial = leader.child->serial,
                                    .epoch = leader.epoch});
}

void leader_elect(group_t *g, child_t *gone) {
  if (gone != NULL && gone != leader.child) return;
  if (gone == NULL && leader.child != NULL) return;
  child_t *best = NULL;
  for (child_t *c = g->children; c; c = c->next)
    if (c != gone && group_child_running(c) && c->state == CHILD_READY && (!best || c->serial < best->serial))
      best = c;
  leader.child = best;
  if (best == NULL) return;
  leader.epoch++;
  mf_log("mesh leader: worker %d (pid %d), epoch %ld", best->id, best->pid, leader.epoch);
  for (child_t *c = g->children; c; c = c->next)
    if (group_child_running(c)) leader_tell(c);
}

void leader_forget(const child_t *c) {
  if (leader.child == c) leader.child = NULL;
}

void leader_settle(group_t *g, int announced) {
  if (leader.child != NULL || g->stopping) return;
  if (announced || uv_now(g->loop) - leader.started_ms > LEADER_WAIT_MS) leader_elect(g, NULL);
}
