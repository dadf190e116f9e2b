/* leader.h -- the mesh seen from the master: joining ready workers, and naming the mesh's leader. */
#ifndef MOONFORK_LEADER_H
#define MOONFORK_LEADER_H

#include "group.h"

/* Notes when the group started (the 5 s after which a leader is named even if not all are ready). */
void leader_init(const group_t *g);
/* c is ready: joins it to every other ready child with a socketpair ("peer ID SERIAL" + fd each way). */
void leader_join(group_t *g, child_t *c);
/* c's stream to worker `id` of `serial` was dropped while both live: makes them a new pair (when both
 * are still joined; a worker that left is not re-joined). */
void leader_repair(group_t *g, child_t *c, int id, long serial);
/* Tells c who leads ("leader ID SERIAL EPOCH"), when someone does. */
void leader_tell(child_t *c);
/* Names the oldest ready child the leader when there is none, or when `gone` (leaving) was it. */
void leader_elect(group_t *g, child_t *gone);
/* c is gone (freed): it leads no more. */
void leader_forget(const child_t *c);
/* Names a first leader once the first children were all ready (`announced`) or 5 s have passed. */
void leader_settle(group_t *g, int announced);

#endif
