/* chanset.c -- a table of named channels and their members, shared by ws_chan.c (WebSocket) and
 * http_chan.c (SSE streams); each keeps its own table, its writes and its slow-member policy.
 *
 * The table: channels hashed by name (FNV-1a) into a power-of-two count of buckets, doubled once there
 * are as many channels (from 64). A channel is made on its first join and freed when its last member
 * leaves, unless a publish to it is under way (then when it ends).
 *
 * Members: a channel holds an array of members, each knowing its place in it, so a leave is a swap
 * with the last. While a publish walks the array (busy), a member that leaves (its write failed, it
 * was cut off as too slow, a listener run meanwhile left) only empties its owner pointer: a hole, freed
 * and closed up by chanset_end, so the walk neither skips nor repeats a member. An owner's memberships
 * are a list through the members (the head is the owner module's to keep).
 *
 * The walk's start rotates (see ws_chan.c for the measurement): a fan-out is one send(2) per member,
 * so whoever is last in a fixed order always waits the longest. */
#include "chanset.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uint32_t name_hash(const char *p, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

static chanset_chan_t **bucket_of(const chanset_t *s, uint32_t h) { return &s->buckets[h & (s->nbuckets - 1)]; }

static chanset_chan_t *find_hashed(const chanset_t *s, const char *name, size_t n, uint32_t h) {
  if (s->nbuckets == 0) return NULL;
  for (chanset_chan_t *ch = *bucket_of(s, h); ch; ch = ch->next)
    if (ch->hash == h && ch->nlen == n && memcmp(ch->name, name, n) == 0) return ch;
  return NULL;
}

chanset_chan_t *chanset_find(const chanset_t *s, const char *name, size_t n) {
  return find_hashed(s, name, n, name_hash(name, n));
}

/* Doubles the buckets (the table starts at 64). 0 or UV_ENOMEM. */
static int buckets_grow(chanset_t *s) {
  size_t nb = s->nbuckets ? s->nbuckets * 2 : 64;
  chanset_chan_t **b = calloc(nb, sizeof *b);
  if (b == NULL) return UV_ENOMEM;
  for (size_t i = 0; i < s->nbuckets; i++) {
    for (chanset_chan_t *ch = s->buckets[i], *next; ch; ch = next) {
      next = ch->next;
      ch->next = b[ch->hash & (nb - 1)];
      b[ch->hash & (nb - 1)] = ch;
    }
  }
  free(s->buckets);
  s->buckets = b;
  s->nbuckets = nb;
  return 0;
}

static chanset_chan_t *chan_new(chanset_t *s, const char *name, size_t n, uint32_t h) {
  if (s->count >= s->nbuckets && buckets_grow(s) != 0) return NULL;
  chanset_chan_t *ch = calloc(1, sizeof *ch + n);
  if (ch == NULL) return NULL;
  memcpy(ch->name, name, n);
  ch->nlen = n;
  ch->hash = h;
  ch->later_tail = &ch->later;
  chanset_chan_t **b = bucket_of(s, h);
  ch->next = *b;
  *b = ch;
  s->count++;
  return ch;
}

static void chan_free_if_empty(chanset_t *s, chanset_chan_t *ch) {
  if (ch->n > 0 || ch->busy) return;
  for (chanset_chan_t **pp = bucket_of(s, ch->hash); *pp; pp = &(*pp)->next) {
    if (*pp == ch) {
      *pp = ch->next;
      break;
    }
  }
  free(ch->members);
  free(ch);
  s->count--;
}

/* Takes m out of its channel's array (or leaves a hole while the channel publishes) and frees it. */
static void member_drop(chanset_t *s, chanset_member_t *m) {
  chanset_chan_t *ch = m->chan;
  if (ch->busy) {
    m->owner = NULL;
    ch->holes++;
    return;
  }
  ch->members[m->idx] = ch->members[--ch->n];
  ch->members[m->idx]->idx = m->idx;
  free(m);
  chan_free_if_empty(s, ch);
}

/* After the publish: the holes go, the array closes up. */
static void chan_compact(chanset_t *s, chanset_chan_t *ch) {
  size_t j = 0;
  for (size_t i = 0; i < ch->n; i++) {
    chanset_member_t *m = ch->members[i];
    if (m->owner == NULL) {
      free(m);
      continue;
    }
    m->idx = j;
    ch->members[j++] = m;
  }
  ch->n = j;
  ch->holes = 0;
  chan_free_if_empty(s, ch);
}

static chanset_member_t **list_find(chanset_member_t **list, const char *name, size_t n) {
  for (chanset_member_t **pp = list; *pp; pp = &(*pp)->next)
    if ((*pp)->chan->nlen == n && memcmp((*pp)->chan->name, name, n) == 0) return pp;
  return NULL;
}

int chanset_join(chanset_t *s, chanset_member_t **list, void *owner, uint32_t tag, const char *name, size_t n) {
  if (list_find(list, name, n)) return 0;
  uint32_t h = name_hash(name, n);
  chanset_chan_t *ch = find_hashed(s, name, n, h);
  if (ch == NULL && (ch = chan_new(s, name, n, h)) == NULL) return UV_ENOMEM;
  chanset_member_t *m = malloc(sizeof *m);
  if (m && ch->n == ch->cap) {
    size_t cap = ch->cap ? ch->cap * 2 : 8;
    chanset_member_t **a = realloc(ch->members, cap * sizeof *a);
    if (a) ch->members = a, ch->cap = cap;
    else free(m), m = NULL;
  }
  if (m == NULL) {
    chan_free_if_empty(s, ch);
    return UV_ENOMEM;
  }
  *m = (chanset_member_t){ch, owner, *list, ch->n, tag};
  ch->members[ch->n++] = m;
  *list = m;
  return 1;
}

int chanset_leave(chanset_t *s, chanset_member_t **list, const char *name, size_t n) {
  chanset_member_t **pp = list_find(list, name, n);
  if (pp == NULL) return 0;
  chanset_member_t *m = *pp;
  *pp = m->next;
  member_drop(s, m);
  return 1;
}

void chanset_leave_all(chanset_t *s, chanset_member_t **list) {
  chanset_member_t *m = *list;
  *list = NULL;
  while (m) {
    chanset_member_t *next = m->next;
    member_drop(s, m);
    m = next;
  }
}

size_t chanset_chan_count(const chanset_chan_t *ch) { return ch->n - ch->holes; }

size_t chanset_count(const chanset_t *s, const char *name, size_t n) {
  chanset_chan_t *ch = chanset_find(s, name, n);
  return ch ? chanset_chan_count(ch) : 0;
}

void chanset_begin(chanset_chan_t *ch) { ch->busy = 1; }

void chanset_end(chanset_t *s, chanset_chan_t *ch) {
  ch->busy = 0;
  if (ch->holes) chan_compact(s, ch);
  else chan_free_if_empty(s, ch);
}

/* The start moves on by the golden ratio of the member count (rot is a fraction of 2^32), so that over
 * any few walks every member's turn falls early as often as late. */
void chanset_walk_init(chanset_walk_t *w, chanset_chan_t *ch) {
  size_t count = ch->n;
  w->ch = ch;
  w->left = count;
  w->i = count ? (size_t)(((uint64_t)ch->rot * count) >> 32) : 0;
  w->count = count;
  ch->rot += 0x9E3779B9u;
}

chanset_member_t *chanset_walk_next(chanset_walk_t *w) {
  while (w->left > 0) {
    chanset_member_t *m = w->ch->members[w->i];
    w->left--;
    w->i = w->i + 1 == w->count ? 0 : w->i + 1;
    if (m->owner) return m;
  }
  return NULL;
}

int chanset_later_add(chanset_chan_t *ch, int kind, const char *p, size_t len) {
  chanset_later_t *l = malloc(sizeof *l + len);
  if (l == NULL) return UV_ENOMEM;
  l->next = NULL;
  l->kind = kind;
  l->len = len;
  if (len) memcpy(l->data, p, len);
  *ch->later_tail = l;
  ch->later_tail = &l->next;
  return 0;
}

chanset_later_t *chanset_later_take(chanset_chan_t *ch) {
  chanset_later_t *l = ch->later;
  if (l && (ch->later = l->next) == NULL) ch->later_tail = &ch->later;
  return l;
}
