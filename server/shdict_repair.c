/* shdict_repair.c -- putting a shared dict right after a process died holding its lock; checking it.
 *
 * The buckets are the truth: an entry counts once it is linked in its bucket (shdict.c writes it
 * completely before that one store). Everything else is derived and rebuilt here: which chunks are
 * used (a mark per chunk), the free list, the LRU list, each list's back links and count, nkeys.
 * Whatever does not check out (an index out of range, a chunk seen twice, a chain of the wrong
 * length, a key in the wrong bucket, a second copy of a key) is cut off, so a torn operation costs at
 * most the entries it was touching; the LRU order is lost (entries are queued in bucket order). */
#include "shdict_internal.h"

#include <stdlib.h>

typedef struct {
  shdict_t *d;
  uint8_t *mark;
} walk_t;

static void unmark_chain(walk_t *w, uint32_t idx, uint32_t k) {
  for (uint32_t j = idx, m = 0; m < k; m++) {
    w->mark[j] = 0;
    j = ((cont_t *)shd_chunk(w->d, j))->next;
  }
}

/* Marks an item's chain of exactly n chunks; 0 when it does not check out (nothing stays marked). */
static int mark_chain(walk_t *w, uint32_t idx, uint32_t n) {
  uint32_t i = idx, k = 0;
  while (k < n) {
    if (i == 0 || i >= w->d->fresh || w->mark[i]) break;
    w->mark[i] = 1;
    k++;
    i = ((cont_t *)shd_chunk(w->d, i))->next;
  }
  if (k == n && i == 0) return 1;
  unmark_chain(w, idx, k);
  return 0;
}

/* Keeps the elements of list e that check out, relinking them back to front. */
static void repair_list(walk_t *w, entry_t *e) {
  uint32_t prev = 0, count = 0, *slot = &e->aux;
  while (*slot) {
    uint32_t el = *slot;
    if (el >= w->d->fresh || w->mark[el]) break;
    elem_t *x = shd_elem(w->d, el);
    int ok = x->type == SHD_TSTRING || x->type == SHD_TNUMBER || x->type == SHD_TBOOLEAN;
    if (!ok || !mark_chain(w, el, shd_nchunks(ELEM_HDR, x->vlen))) break;
    x->eprev = prev;
    prev = el;
    count++;
    slot = &x->enext;
  }
  *slot = 0;
  e->flags = prev;
  e->vlen = count;
}

/* Does entry i (not yet marked) check out as a member of bucket b? Marks its chains when it does. */
static int entry_ok(walk_t *w, uint32_t i, uint32_t b) {
  shdict_t *d = w->d;
  if (i >= d->fresh || w->mark[i]) return 0;
  entry_t *e = shd_entry(d, i);
  if (e->klen == 0 || e->klen > SHD_KEY_MAX || (e->hash & (d->nbuckets - 1)) != b) return 0;
  int t = e->type;
  if (t != SHD_TSTRING && t != SHD_TNUMBER && t != SHD_TBOOLEAN && t != SHD_TLIST) return 0;
  size_t len = e->klen + (t == SHD_TLIST ? 0 : (size_t)e->vlen);
  uint32_t n = shd_nchunks(ENTRY_HDR, len);
  if (!mark_chain(w, i, n)) return 0;
  char *key = malloc(e->klen);
  if (key == NULL) {
    unmark_chain(w, i, n);
    return 0;
  }
  shd_cur_t c;
  shd_cur_init(&c, d, i, ENTRY_HDR);
  shd_cur_read(&c, key, e->klen);
  int ok = shd_hash(key, e->klen) == e->hash && shd_find(d, key, e->klen, e->hash, NULL) == i;
  free(key); /* shd_find: the first copy of a key in its bucket is the newest; a later one goes */
  if (ok && t == SHD_TLIST) {
    repair_list(w, e);
    ok = e->vlen > 0; /* an empty list (a push cut short) goes */
  }
  if (!ok) unmark_chain(w, i, n);
  return ok;
}

static void repair_bucket(walk_t *w, uint32_t b) {
  shdict_t *d = w->d;
  uint32_t *slot = &shd_buckets(d)[b];
  while (*slot) {
    uint32_t i = *slot;
    if (i >= d->fresh || w->mark[i]) {
      *slot = 0;
      break;
    }
    if (!entry_ok(w, i, b)) {
      *slot = shd_entry(d, i)->hnext < d->fresh ? shd_entry(d, i)->hnext : 0;
      continue;
    }
    shd_lru_push(d, i);
    d->nkeys++;
    slot = &shd_entry(d, i)->hnext;
  }
}

void shd_repair(shdict_t *d) {
  if (d->fresh == 0 || d->fresh > d->nchunks) d->fresh = d->nchunks; /* torn: look at every chunk */
  walk_t w = {d, calloc(d->nchunks, 1)};
  if (w.mark == NULL) { /* no memory to check with: start empty rather than trust it */
    shd_format(d);
    return;
  }
  w.mark[0] = 1;
  d->lru_head = d->lru_tail = 0;
  d->nkeys = 0;
  for (uint32_t b = 0; b < d->nbuckets; b++) repair_bucket(&w, b);
  d->free_head = 0;
  d->nfree = d->nchunks - d->fresh;
  for (uint32_t i = d->fresh - 1; i > 0; i--) {
    if (w.mark[i]) continue;
    ((cont_t *)shd_chunk(d, i))->next = d->free_head;
    d->free_head = i;
    d->nfree++;
  }
  free(w.mark);
}

void shd_format(shdict_t *d) {
  memset(shd_buckets(d), 0, (size_t)d->nbuckets * 4);
  d->free_head = 0;
  d->fresh = 1;
  d->nfree = d->nchunks - 1;
  d->lru_head = d->lru_tail = 0;
  d->nkeys = 0;
}

/* --- the checker (tests) ------------------------------------------------------------------------ */

static int check_lru(shdict_t *d) {
  uint32_t n = 0, prev = 0;
  for (uint32_t i = d->lru_head; i; i = shd_entry(d, i)->lnext) {
    if (i >= d->nchunks || shd_entry(d, i)->lprev != prev || ++n > d->nkeys) return __LINE__;
    prev = i;
  }
  return n == d->nkeys && prev == d->lru_tail ? 0 : __LINE__;
}

static int check_list(walk_t *w, entry_t *e) {
  uint32_t prev = 0, n = 0;
  for (uint32_t el = e->aux; el; el = shd_elem(w->d, el)->enext) {
    elem_t *x = shd_elem(w->d, el);
    if (x->eprev != prev || !mark_chain(w, el, shd_nchunks(ELEM_HDR, x->vlen))) return __LINE__;
    prev = el;
    n++;
  }
  return prev == e->flags && n == e->vlen && n > 0 ? 0 : __LINE__;
}

int shdict_check(shdict_t *d) {
  walk_t w = {d, calloc(d->nchunks, 1)};
  int r = 0;
  uint32_t keys = 0, freen = 0;
  if (w.mark == NULL) return __LINE__;
  w.mark[0] = 1;
  for (uint32_t b = 0; b < d->nbuckets && !r; b++) {
    for (uint32_t i = shd_buckets(d)[b]; i && !r; i = shd_entry(d, i)->hnext) {
      entry_t *e = shd_entry(d, i);
      size_t len = e->klen + (e->type == SHD_TLIST ? 0 : (size_t)e->vlen);
      if ((e->hash & (d->nbuckets - 1)) != b || !mark_chain(&w, i, shd_nchunks(ENTRY_HDR, len))) r = __LINE__;
      else if (e->type == SHD_TLIST) r = check_list(&w, e);
      keys++;
    }
  }
  for (uint32_t i = d->free_head; i && !r; i = ((cont_t *)shd_chunk(d, i))->next, freen++)
    if (i >= d->fresh || w.mark[i]) r = __LINE__;
    else w.mark[i] = 1;
  if (!r && (keys != d->nkeys || freen + (d->nchunks - d->fresh) != d->nfree)) r = __LINE__;
  for (uint32_t i = 1; i < d->fresh && !r; i++)
    if (!w.mark[i]) r = __LINE__; /* a chunk neither used nor free: leaked */
  if (!r) r = check_lru(d);
  free(w.mark);
  return r;
}
