/* chanset.h -- a table of named channels whose members are opaque owners (a WebSocket connection, an
 * HTTP response), the bookkeeping ws_chan.c and http_chan.c share: lookup and creation by name, the
 * member arrays (holes while a publish is under way, compaction after), each owner's list of its
 * memberships, the rotating start of a publish, and the messages published meanwhile. Pure: no I/O. */
#ifndef MOONFORK_CHANSET_H
#define MOONFORK_CHANSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct chanset_chan_s chanset_chan_t;
typedef struct chanset_member_s chanset_member_t;
typedef struct chanset_later_s chanset_later_t;

struct chanset_member_s {
  chanset_chan_t *chan;
  void *owner;            /* NULL: it left during a publish (a hole, freed after it) */
  chanset_member_t *next; /* the owner's next membership */
  size_t idx;             /* its place in chan->members */
  uint32_t tag;           /* the owner module's (http_chan.c: the request whose response joined) */
};

/* A message published to a channel while it was being published to: a copy, for the owner module to
 * write once the publish under way is done. */
struct chanset_later_s {
  chanset_later_t *next;
  int kind; /* the owner module's (ws_chan.c: the opcode) */
  size_t len;
  char data[];
};

struct chanset_chan_s {
  chanset_chan_t *next; /* in its hash bucket */
  chanset_member_t **members;
  size_t n, cap;
  unsigned busy; /* a publish is under way: members who leave leave holes */
  unsigned holes;
  chanset_later_t *later, **later_tail; /* what was published meanwhile, in order */
  uint32_t rot;  /* where the next publish starts: moves on by the golden ratio each time */
  uint32_t hash;
  size_t nlen;
  char name[];
};

/* One table; a zeroed one is empty (it allocates its buckets on the first channel). */
typedef struct {
  chanset_chan_t **buckets;
  size_t nbuckets, count;
} chanset_t;

/* The channel named name[0..n), or NULL. */
chanset_chan_t *chanset_find(const chanset_t *s, const char *name, size_t n);
/* owner joins the channel (made when new), first in its list *list: 1, 0 when a member already (found
 * in *list), UV_ENOMEM. */
int chanset_join(chanset_t *s, chanset_member_t **list, void *owner, uint32_t tag, const char *name, size_t n);
/* The membership in *list leaves the channel: 1, or 0 when there was none. */
int chanset_leave(chanset_t *s, chanset_member_t **list, const char *name, size_t n);
/* Every membership in *list leaves its channel; *list becomes NULL. */
void chanset_leave_all(chanset_t *s, chanset_member_t **list);
/* Members of the channel (holes not counted); 0 when there is no such channel. */
size_t chanset_count(const chanset_t *s, const char *name, size_t n);
size_t chanset_chan_count(const chanset_chan_t *ch);

/* A publish: chanset_begin marks ch busy (members that leave meanwhile leave holes), chanset_end
 * closes the holes up and frees ch when it has no member left. */
void chanset_begin(chanset_chan_t *ch);
void chanset_end(chanset_t *s, chanset_chan_t *ch);

/* The members as they were when the walk began, each once, in array order from a start that moves on
 * with every walk (chanset_walk_init): a member that left meanwhile is skipped, one that joined
 * meanwhile waits for the next walk. Call only while ch is busy (the array does not close up). */
typedef struct {
  chanset_chan_t *ch;
  size_t i, left, count;
} chanset_walk_t;
void chanset_walk_init(chanset_walk_t *w, chanset_chan_t *ch);
/* The next member still there, or NULL at the end. */
chanset_member_t *chanset_walk_next(chanset_walk_t *w);

/* Keeps a copy of p[0..len) to be written after the publish under way: 0, or UV_ENOMEM. */
int chanset_later_add(chanset_chan_t *ch, int kind, const char *p, size_t len);
/* The first message kept, taken out of the queue (the caller frees it), or NULL. */
chanset_later_t *chanset_later_take(chanset_chan_t *ch);

#endif
