/* http_chan.c -- channels of open HTTP responses: one published piece of body to every member in this
 * worker (the SSE fan-out of a chat).
 *
 * Why in C: a broadcast to 20,000 SSE streams from Lua is 20,000 calls to res:write, each framing the
 * same chunk, with the script slicing the loop (moonfork.sleep(0)) so that other work gets a turn. Here
 * the chunk (size line, data, CRLF) is built once and each member is written the same bytes with one
 * send(2) and no copy (writeq copies only what the kernel does not take at once), as ws_chan.c does for
 * WebSocket frames. A member whose response is close-delimited gets the data as it is.
 *
 * The order rotates from one publish to the next (see ws_chan.c for the measurement): the start moves
 * on by the golden ratio of the member count, so no member is always written last.
 *
 * A slow member, one with more than HTTP_HIGH_WATER (256 KiB) queued when a message comes, has its
 * connection closed, not skipped (it would miss messages on a stream that stays open) and not queued
 * without end: its client (an EventSource) reconnects and resumes with Last-Event-ID.
 *
 * Membership: http_conn_t is kept at a 352-byte malloc chunk, so it holds one bit (in_chan), not a
 * pointer; the memberships of a connection are found in a table keyed by the connection's address
 * (`owners`, open addressing). A response leaves its channels when it ends (http_conn_request_done) or
 * its connection closes (on_handle_closed), both in http_conn.c, or at once when it is cut off as too
 * slow. Nothing in a publish calls Lua (a closed connection's "close" listeners run from its close
 * callback, on a later loop turn), so a publish from such a listener comes after the one under way;
 * members that leave meanwhile leave a hole in the array, filled after the publish. */
#include "http_chan.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "http_internal.h"

typedef struct chan_s chan_t;
typedef struct member_s member_t;

struct member_s {
  chan_t *chan;
  http_conn_t *conn; /* NULL: it left during a publish (a hole, freed after it) */
  member_t *next;    /* the connection's next membership */
  size_t idx;        /* its place in chan->members */
  uint32_t gen;      /* the request whose response joined */
};

struct chan_s {
  chan_t *next; /* in its hash bucket */
  member_t **members;
  size_t n, cap;
  unsigned busy, holes;
  uint32_t rot, hash;
  size_t nlen;
  char name[];
};

static struct {
  chan_t **buckets;
  size_t nbuckets, count;
} chans;

/* connection -> its first membership; a slot is free when c is NULL */
typedef struct {
  http_conn_t *c;
  member_t *m;
} owner_t;

static struct {
  owner_t *slots;
  size_t cap, count; /* cap: a power of two, kept at least twice count */
} owners;

static uint32_t name_hash(const char *p, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

/* ---- connection -> memberships ------------------------------------------------------------ */

static size_t owner_home(const http_conn_t *c) {
  return (size_t)((((uint64_t)(uintptr_t)c >> 4) * 0x9E3779B97F4A7C15ull) >> 20) & (owners.cap - 1);
}

/* c's slot, or NULL when c has none. */
static owner_t *owner_find(const http_conn_t *c) {
  if (owners.cap == 0) return NULL;
  for (size_t i = owner_home(c);; i = (i + 1) & (owners.cap - 1)) {
    if (owners.slots[i].c == c) return &owners.slots[i];
    if (owners.slots[i].c == NULL) return NULL;
  }
}

static owner_t *owner_put(http_conn_t *c, member_t *m) {
  size_t i = owner_home(c);
  while (owners.slots[i].c != NULL) i = (i + 1) & (owners.cap - 1);
  owners.slots[i] = (owner_t){c, m};
  owners.count++;
  return &owners.slots[i];
}

/* Makes room for one more. 0 or UV_ENOMEM. */
static int owners_reserve(void) {
  if ((owners.count + 1) * 2 <= owners.cap) return 0;
  size_t cap = owners.cap ? owners.cap * 2 : 64;
  owner_t *old = owners.slots, *s = calloc(cap, sizeof *s);
  if (s == NULL) return UV_ENOMEM;
  size_t oldcap = owners.cap;
  owners.slots = s;
  owners.cap = cap;
  owners.count = 0;
  for (size_t i = 0; i < oldcap; i++)
    if (old[i].c) owner_put(old[i].c, old[i].m);
  free(old);
  return 0;
}

/* Empties slot o, moving later entries of its run back so that every lookup still finds them. */
static void owner_del(owner_t *o) {
  size_t mask = owners.cap - 1, i = (size_t)(o - owners.slots), j = i;
  owners.slots[i].c = NULL;
  owners.count--;
  for (;;) {
    j = (j + 1) & mask;
    if (owners.slots[j].c == NULL) return;
    size_t k = owner_home(owners.slots[j].c);
    /* the entry at j may move to the hole at i unless its home lies cyclically in (i, j] */
    if ((i <= j) ? (i < k && k <= j) : (i < k || k <= j)) continue;
    owners.slots[i] = owners.slots[j];
    owners.slots[j].c = NULL;
    i = j;
  }
}

/* ---- channels ------------------------------------------------------------------------------ */

static chan_t **bucket_of(uint32_t h) { return &chans.buckets[h & (chans.nbuckets - 1)]; }

static chan_t *chan_find(const char *name, size_t n) {
  if (chans.nbuckets == 0) return NULL;
  uint32_t h = name_hash(name, n);
  for (chan_t *ch = *bucket_of(h); ch; ch = ch->next)
    if (ch->hash == h && ch->nlen == n && memcmp(ch->name, name, n) == 0) return ch;
  return NULL;
}

static int buckets_grow(void) {
  size_t nb = chans.nbuckets ? chans.nbuckets * 2 : 64;
  chan_t **b = calloc(nb, sizeof *b);
  if (b == NULL) return UV_ENOMEM;
  for (size_t i = 0; i < chans.nbuckets; i++) {
    for (chan_t *ch = chans.buckets[i], *next; ch; ch = next) {
      next = ch->next;
      ch->next = b[ch->hash & (nb - 1)];
      b[ch->hash & (nb - 1)] = ch;
    }
  }
  free(chans.buckets);
  chans.buckets = b;
  chans.nbuckets = nb;
  return 0;
}

static chan_t *chan_new(const char *name, size_t n) {
  if (chans.count >= chans.nbuckets && buckets_grow() != 0) return NULL;
  chan_t *ch = calloc(1, sizeof *ch + n);
  if (ch == NULL) return NULL;
  memcpy(ch->name, name, n);
  ch->nlen = n;
  ch->hash = name_hash(name, n);
  chan_t **b = bucket_of(ch->hash);
  ch->next = *b;
  *b = ch;
  chans.count++;
  return ch;
}

static void chan_free_if_empty(chan_t *ch) {
  if (ch->n > 0 || ch->busy) return;
  for (chan_t **pp = bucket_of(ch->hash); *pp; pp = &(*pp)->next) {
    if (*pp == ch) {
      *pp = ch->next;
      break;
    }
  }
  free(ch->members);
  free(ch);
  chans.count--;
}

/* Takes m out of its channel's array (or leaves a hole while the channel publishes) and frees it. */
static void member_drop(member_t *m) {
  chan_t *ch = m->chan;
  if (ch->busy) {
    m->conn = NULL;
    ch->holes++;
    return;
  }
  ch->members[m->idx] = ch->members[--ch->n];
  ch->members[m->idx]->idx = m->idx;
  free(m);
  chan_free_if_empty(ch);
}

static void chan_compact(chan_t *ch) {
  size_t j = 0;
  for (size_t i = 0; i < ch->n; i++) {
    member_t *m = ch->members[i];
    if (m->conn == NULL) {
      free(m);
      continue;
    }
    m->idx = j;
    ch->members[j++] = m;
  }
  ch->n = j;
  ch->holes = 0;
  chan_free_if_empty(ch);
}

/* Adds a member for c to ch, first in c's list (head: c's slot, or NULL when it has none yet). */
static int chan_add(chan_t *ch, http_conn_t *c, uint32_t gen, owner_t *head) {
  if (head == NULL && owners_reserve() != 0) return UV_ENOMEM;
  member_t *m = malloc(sizeof *m);
  if (m && ch->n == ch->cap) {
    size_t cap = ch->cap ? ch->cap * 2 : 8;
    member_t **a = realloc(ch->members, cap * sizeof *a);
    if (a) ch->members = a, ch->cap = cap;
    else free(m), m = NULL;
  }
  if (m == NULL) return UV_ENOMEM;
  *m = (member_t){ch, c, head ? head->m : NULL, ch->n, gen};
  ch->members[ch->n++] = m;
  if (head) head->m = m;
  else owner_put(c, m);
  c->in_chan = 1;
  return 1;
}

int http_chan_join(http_conn_t *c, uint32_t gen, const char *name, size_t n) {
  if (c == NULL || c->closing || c->state != HTTP_CONN_HANDLING || gen != c->gen) return UV_EPIPE;
  if (!c->head_sent || c->is_head || c->status < 200 || c->status == 204 || c->status == 304 || c->clen_left >= 0)
    return UV_EINVAL;
  owner_t *o = c->in_chan ? owner_find(c) : NULL;
  for (member_t *m = o ? o->m : NULL; m; m = m->next)
    if (m->chan->nlen == n && memcmp(m->chan->name, name, n) == 0) return 0;
  chan_t *ch = chan_find(name, n);
  if (ch == NULL && (ch = chan_new(name, n)) == NULL) return UV_ENOMEM;
  int r = chan_add(ch, c, gen, o);
  if (r < 0) chan_free_if_empty(ch);
  return r;
}

int http_chan_leave(http_conn_t *c, const char *name, size_t n) {
  owner_t *o = c && c->in_chan ? owner_find(c) : NULL;
  if (o == NULL) return 0;
  for (member_t **pp = &o->m; *pp; pp = &(*pp)->next) {
    member_t *m = *pp;
    if (m->chan->nlen == n && memcmp(m->chan->name, name, n) == 0) {
      *pp = m->next;
      member_drop(m);
      if (o->m == NULL) {
        owner_del(o);
        c->in_chan = 0;
      }
      return 1;
    }
  }
  return 0;
}

void http_chan_leave_all(http_conn_t *c) {
  owner_t *o = c->in_chan ? owner_find(c) : NULL;
  c->in_chan = 0;
  if (o == NULL) return;
  member_t *m = o->m;
  owner_del(o);
  while (m) {
    member_t *next = m->next;
    member_drop(m);
    m = next;
  }
}

size_t http_chan_count(const char *name, size_t n) {
  chan_t *ch = chan_find(name, n);
  return ch ? ch->n - ch->holes : 0;
}

/* ---- publish ------------------------------------------------------------------------------- */

/* Writes one piece to a member: 1 when written, 0 when not (gone, or cut off as too slow). */
static int member_send(member_t *m, const uv_buf_t *plain, const uv_buf_t *chunk, size_t len) {
  http_conn_t *c = m->conn;
  if (c->closing || c->state != HTTP_CONN_HANDLING || c->gen != m->gen) return 0;
  if (http_conn_queued(c) > HTTP_HIGH_WATER) {
    http_conn_close(c);    /* its client reconnects and resumes from the last event it saw */
    http_chan_leave_all(c); /* at once: it gets nothing more */
    return 0;
  }
  uv_buf_t b = c->chunked ? *chunk : *plain;
  c->bytes_out += len;
  if (http_conn_write(c, &b, 1) >= 0) return 1;
  http_chan_leave_all(c);
  return 0;
}

#define HTTP_CHAN_STACK 4096

size_t http_chan_publish(const char *name, size_t n, const char *p, size_t len) {
  chan_t *ch = chan_find(name, n);
  if (ch == NULL || len == 0 || ch->busy) return 0; /* (busy: nothing in a publish calls Lua) */
  char stack[HTTP_CHAN_STACK], hex[20];
  int k = (int)sizeof hex;
  for (size_t v = len; v > 0; v >>= 4) hex[--k] = "0123456789abcdef"[v & 15];
  size_t hl = sizeof hex - (size_t)k, flen = hl + 2 + len + 2;
  char *f = flen <= sizeof stack ? stack : malloc(flen);
  if (f == NULL) return 0;
  memcpy(f, hex + k, hl);
  memcpy(f + hl, "\r\n", 2);
  memcpy(f + hl + 2, p, len);
  memcpy(f + hl + 2 + len, "\r\n", 2);
  uv_buf_t plain = uv_buf_init((char *)p, (unsigned)len), chunk = uv_buf_init(f, (unsigned)flen);
  ch->busy = 1;
  size_t sent = 0, count = ch->n;
  size_t start = count ? (size_t)(((uint64_t)ch->rot * count) >> 32) : 0;
  ch->rot += 0x9E3779B9u;
  for (size_t j = 0, i = start; j < count; j++, i = i + 1 == count ? 0 : i + 1)
    if (ch->members[i]->conn) sent += (size_t)member_send(ch->members[i], &plain, &chunk, len);
  ch->busy = 0;
  if (f != stack) free(f);
  if (ch->holes) chan_compact(ch);
  return sent;
}
