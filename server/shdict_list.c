/* shdict_list.c -- a shared dict's lists (lpush, rpush, lpop, rpop, llen), get_keys and flush_expired.
 *
 * A list is an entry of type SHD_TLIST whose elements are items of their own, doubly linked: the entry
 * holds the first (aux), the last (flags) and the count (vlen). As in OpenResty, a push never evicts
 * live entries: a full dict answers "no memory". get_keys walks the buckets a batch at a time, so a
 * large dict does not hold the lock (and every worker) for the whole walk. */
#include "shdict_internal.h"

static int check_key(size_t klen) { return klen == 0 || klen > SHD_KEY_MAX ? SHD_EKEY : 0; }

/* The live list entry for key: SHD_ENOTFOUND when missing (an expired one is removed first). */
static int list_find(shdict_t *d, const char *key, size_t klen, uint32_t hash, uint32_t *out) {
  uint32_t i = shd_find(d, key, klen, hash, NULL);
  if (i && shd_dead(shd_entry(d, i))) {
    shd_remove(d, i);
    i = 0;
  }
  if (i == 0) return SHD_ENOTFOUND;
  if (shd_entry(d, i)->type != SHD_TLIST) return SHD_ENOTLIST;
  *out = i;
  return 0;
}

static uint32_t elem_new(shdict_t *d, const shdict_val_t *v, const char *str, uint32_t n) {
  uint32_t el = shd_alloc(d, n);
  elem_t *x = shd_elem(d, el);
  x->vlen = (uint32_t)shd_value_len(v);
  x->type = (uint8_t)v->type;
  x->eprev = x->enext = 0;
  shd_cur_t c;
  shd_cur_init(&c, d, el, ELEM_HDR);
  shd_write_value(&c, v, str);
  return el;
}

static int push_locked(shdict_t *d, const char *key, size_t klen, int left, const shdict_val_t *v,
                       const char *str, int64_t *len) {
  uint32_t hash = shd_hash(key, klen), i = 0;
  int r = list_find(d, key, klen, hash, &i);
  if (r == SHD_ENOTLIST) return r;
  uint32_t n = shd_nchunks(ELEM_HDR, (size_t)shd_value_len(v));
  uint32_t ne = i ? 0 : shd_nchunks(ENTRY_HDR, klen);
  if ((r = shd_make_room(d, n + ne, 1, NULL)) != 0) return r;
  if (i == 0) { /* a new, empty list; linked at once (an empty list is valid) */
    i = shd_alloc(d, ne);
    entry_t *e = shd_entry(d, i);
    e->hash = hash, e->klen = (uint32_t)klen, e->vlen = 0, e->flags = 0, e->aux = 0, e->expire = 0;
    e->type = SHD_TLIST;
    shd_cur_t c;
    shd_cur_init(&c, d, i, ENTRY_HDR);
    shd_cur_write(&c, key, klen);
    uint32_t *b = &shd_buckets(d)[hash & (d->nbuckets - 1)];
    e->hnext = *b;
    __atomic_store_n(b, i, __ATOMIC_RELEASE);
    shd_lru_push(d, i);
    d->nkeys++;
  }
  entry_t *e = shd_entry(d, i);
  uint32_t el = elem_new(d, v, str, n);
  __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the element is written before it is linked */
  elem_t *x = shd_elem(d, el);
  if (left) {
    x->enext = e->aux;
    if (e->aux) shd_elem(d, e->aux)->eprev = el;
    else e->flags = el;
    e->aux = el;
  } else {
    x->eprev = e->flags;
    if (e->flags) shd_elem(d, e->flags)->enext = el;
    else e->aux = el;
    e->flags = el;
  }
  *len = ++e->vlen;
  return 0;
}

int shdict_push(shdict_t *d, const char *key, size_t klen, int left, const shdict_val_t *v,
                const char *str, int64_t *len) {
  if (check_key(klen)) return SHD_EKEY;
  if (shd_value_len(v) < 0) return SHD_EVALUE;
  if (shdict_lock(d)) return SHD_ELOCK;
  int r = push_locked(d, key, klen, left, v, str, len);
  shdict_unlock(d);
  return r;
}

static int pop_locked(shdict_t *d, const char *key, size_t klen, int left, shdict_val_t *v, char *buf,
                      size_t buflen) {
  uint32_t i = 0;
  int r = list_find(d, key, klen, shd_hash(key, klen), &i);
  if (r) return r;
  entry_t *e = shd_entry(d, i);
  uint32_t el = left ? e->aux : e->flags;
  if (el == 0) return SHD_ENOTFOUND;
  elem_t *x = shd_elem(d, el);
  shd_cur_t c;
  shd_cur_init(&c, d, el, ELEM_HDR);
  v->flags = 0, v->stale = 0;
  if ((r = shd_read_value(&c, x->type, x->vlen, v, buf, buflen)) != 0) return r;
  if (left) {
    e->aux = x->enext;
    if (x->enext) shd_elem(d, x->enext)->eprev = 0;
    else e->flags = 0;
  } else {
    e->flags = x->eprev;
    if (x->eprev) shd_elem(d, x->eprev)->enext = 0;
    else e->aux = 0;
  }
  e->vlen--;
  shd_free(d, el);
  if (e->vlen == 0) shd_remove(d, i);
  return 0;
}

int shdict_pop(shdict_t *d, const char *key, size_t klen, int left, shdict_val_t *v, char *buf,
               size_t buflen) {
  if (check_key(klen)) return SHD_EKEY;
  if (shdict_lock(d)) return SHD_ELOCK;
  int r = pop_locked(d, key, klen, left, v, buf, buflen);
  shdict_unlock(d);
  return r;
}

int shdict_llen(shdict_t *d, const char *key, size_t klen, int64_t *len) {
  if (check_key(klen)) return SHD_EKEY;
  if (shdict_lock(d)) return SHD_ELOCK;
  uint32_t i = 0;
  int r = list_find(d, key, klen, shd_hash(key, klen), &i);
  *len = r == 0 ? shd_entry(d, i)->vlen : 0;
  shdict_unlock(d);
  return r == SHD_ENOTFOUND ? 0 : r;
}

int shdict_flush_expired(shdict_t *d, int max) {
  if (shdict_lock(d)) return SHD_ELOCK;
  uint64_t now = shd_now();
  int n = 0;
  for (uint32_t i = d->lru_tail, prev; i && (max <= 0 || n < max); i = prev) {
    prev = shd_entry(d, i)->lprev;
    if (shd_expired(shd_entry(d, i), now)) shd_remove(d, i), n++;
  }
  shdict_unlock(d);
  return n;
}

#define KEYS_BATCH 256 /* buckets per lock hold */

/* Appends bucket b's live keys; returns how many, or -1 when they do not fit (nothing appended). */
static int keys_bucket(shdict_t *d, uint32_t b, uint64_t now, char *buf, size_t buflen, size_t *used) {
  size_t need = 0;
  int n = 0;
  for (uint32_t i = shd_buckets(d)[b]; i; i = shd_entry(d, i)->hnext)
    if (!shd_expired(shd_entry(d, i), now)) need += 4 + shd_entry(d, i)->klen, n++;
  if (*used + need > buflen) {
    if (*used == 0) *used = need;
    return -1;
  }
  for (uint32_t i = shd_buckets(d)[b]; i; i = shd_entry(d, i)->hnext) {
    entry_t *e = shd_entry(d, i);
    if (shd_expired(e, now)) continue;
    memcpy(buf + *used, &e->klen, 4);
    shd_cur_t c;
    shd_cur_init(&c, d, i, ENTRY_HDR);
    shd_cur_read(&c, buf + *used + 4, e->klen);
    *used += 4 + e->klen;
  }
  return n;
}

int shdict_keys(shdict_t *d, uint32_t *cursor, int max, char *buf, size_t buflen, size_t *used) {
  *used = 0;
  if (shdict_lock(d)) return SHD_ELOCK;
  uint64_t now = shd_now();
  int count = 0;
  uint32_t b = *cursor, end = b + KEYS_BATCH < d->nbuckets ? b + KEYS_BATCH : d->nbuckets;
  for (; b < end && (max <= 0 || count < max); b++) {
    int n = keys_bucket(d, b, now, buf, buflen, used);
    if (n < 0) {
      if (count == 0) { /* *used: what this bucket needs */
        shdict_unlock(d);
        *cursor = b;
        return SHD_EBUF;
      }
      break;
    }
    count += n;
  }
  shdict_unlock(d);
  *cursor = b;
  return count;
}
