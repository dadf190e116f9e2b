/* shdict.c -- a dictionary in shared memory: hash, LRU, expiry and a chunk allocator over one region.
 *
 * Pure: no event loop, no Lua, no knowledge of who maps the region (shdict_region.c does that). Every
 * operation takes the dict's lock (shdict_lock.c); the first process to take it after an owner died
 * holding it rebuilds the derived state from the buckets (shdict_repair.c) before it goes on. To
 * make that rebuild possible, writes are ordered so that the buckets are always a valid picture: a
 * new entry is filled completely before the one store that links it, and an old one is unlinked
 * before its chunks go back on the free list. Lists and get_keys are in shdict_list.c. */
#define _GNU_SOURCE
#include "shdict_internal.h"

#include <math.h>
#include <time.h>

static uint64_t (*shdict_clock)(void);

void shdict_set_clock(uint64_t (*now_ms)(void)) { shdict_clock = now_ms; }

uint64_t shd_now(void) {
  if (shdict_clock) return shdict_clock();
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

const char *shdict_strerror(int r) {
  switch (r) {
  case SHD_OK: return "ok";
  case SHD_ENOMEM: return "no memory";
  case SHD_EEXISTS: return "exists";
  case SHD_ENOTFOUND: return "not found";
  case SHD_ENOTNUM: return "not a number";
  case SHD_ELIST: return "value is a list";
  case SHD_ENOTLIST: return "value not a list";
  case SHD_EKEY: return "bad key";
  case SHD_EBUF: return "buffer too small";
  case SHD_ELOCK: return "lock failed";
  case SHD_EVALUE: return "bad value type";
  default: return "unknown error";
  }
}

/* --- set-up ------------------------------------------------------------------------------------ */

int shdict_init(void *mem, size_t size) {
  if (size < SHD_MIN_SIZE) return -1;
  shdict_t *d = mem;
  memset(d, 0, sizeof *d);
  size_t hdr = (sizeof *d + CHUNK - 1) / CHUNK * CHUNK;
  uint64_t approx = (size - hdr) / CHUNK;
  uint32_t nb = 1;
  while (nb < approx / 4 && nb < (1u << 30)) nb <<= 1; /* about one bucket per four chunks */
  d->buckets_off = hdr;
  d->chunks_off = hdr + ((uint64_t)nb * 4 + CHUNK - 1) / CHUNK * CHUNK;
  uint64_t n = (size - d->chunks_off) / CHUNK;
  if (n > UINT32_MAX) n = UINT32_MAX;
  d->nchunks = (uint32_t)n;
  d->nbuckets = nb;
  d->size = size;
  d->lock = 0;
  d->repair = 0;
  shd_format(d);
  d->magic = SHD_MAGIC;
  return 0;
}

shdict_t *shdict_open(void *mem, size_t size) {
  shdict_t *d = mem;
  if (d == NULL || size < SHD_MIN_SIZE || d->magic != SHD_MAGIC || d->size != size) return NULL;
  return d;
}

/* --- chunks, cursors, hashing ------------------------------------------------------------------ */

void shd_cur_init(shd_cur_t *c, const shdict_t *d, uint32_t idx, size_t hsz) {
  c->d = d;
  c->idx = idx;
  c->p = (char *)shd_chunk(d, idx) + hsz;
  c->left = CHUNK - hsz;
}

static void cur_step(shd_cur_t *c) {
  c->idx = ((cont_t *)shd_chunk(c->d, c->idx))->next;
  c->p = ((cont_t *)shd_chunk(c->d, c->idx))->data;
  c->left = CHUNK - CONT_HDR;
}

void shd_cur_write(shd_cur_t *c, const void *src, size_t n) {
  const char *s = src;
  while (n > 0) {
    if (c->left == 0) cur_step(c);
    size_t k = n < c->left ? n : c->left;
    memcpy(c->p, s, k);
    c->p += k, c->left -= k, s += k, n -= k;
  }
}

void shd_cur_read(shd_cur_t *c, void *dst, size_t n) {
  char *o = dst;
  while (n > 0) {
    if (c->left == 0) cur_step(c);
    size_t k = n < c->left ? n : c->left;
    memcpy(o, c->p, k);
    c->p += k, c->left -= k, o += k, n -= k;
  }
}

int shd_cur_equal(shd_cur_t *c, const void *src, size_t n) {
  const char *s = src;
  while (n > 0) {
    if (c->left == 0) cur_step(c);
    size_t k = n < c->left ? n : c->left;
    if (memcmp(c->p, s, k) != 0) return 0;
    c->p += k, c->left -= k, s += k, n -= k;
  }
  return 1;
}

void shd_cur_skip(shd_cur_t *c, size_t n) {
  while (n > 0) {
    if (c->left == 0) cur_step(c);
    size_t k = n < c->left ? n : c->left;
    c->p += k, c->left -= k, n -= k;
  }
}

uint32_t shd_hash(const char *key, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0xff51afd7ed558ccdULL), w;
  for (; n >= 8; key += 8, n -= 8) {
    memcpy(&w, key, 8);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 31;
  }
  w = 0;
  memcpy(&w, key, n);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 29;
  return (uint32_t)(h ^ (h >> 32));
}

/* Takes n chunks as one chain (the caller checked nfree): from the free list, then never-used ones.
 * Returns its first. */
uint32_t shd_alloc(shdict_t *d, uint32_t n) {
  uint32_t first = 0, *link = &first;
  for (uint32_t k = 0; k < n; k++) {
    uint32_t i = d->free_head;
    if (i) d->free_head = ((cont_t *)shd_chunk(d, i))->next;
    else i = d->fresh++;
    *link = i;
    link = &((cont_t *)shd_chunk(d, i))->next;
  }
  *link = 0;
  d->nfree -= n;
  return first;
}

void shd_free(shdict_t *d, uint32_t idx) {
  uint32_t last = idx, n = 1;
  while (((cont_t *)shd_chunk(d, last))->next != 0) last = ((cont_t *)shd_chunk(d, last))->next, n++;
  ((cont_t *)shd_chunk(d, last))->next = d->free_head;
  d->free_head = idx;
  d->nfree += n;
}

/* --- entries ----------------------------------------------------------------------------------- */

void shd_lru_unlink(shdict_t *d, uint32_t i) {
  entry_t *e = shd_entry(d, i);
  if (e->lprev) shd_entry(d, e->lprev)->lnext = e->lnext;
  else d->lru_head = e->lnext;
  if (e->lnext) shd_entry(d, e->lnext)->lprev = e->lprev;
  else d->lru_tail = e->lprev;
  e->lprev = e->lnext = 0;
}

void shd_lru_push(shdict_t *d, uint32_t i) {
  entry_t *e = shd_entry(d, i);
  e->lprev = 0;
  e->lnext = d->lru_head;
  if (d->lru_head) shd_entry(d, d->lru_head)->lprev = i;
  else d->lru_tail = i;
  d->lru_head = i;
}

uint32_t shd_find(shdict_t *d, const char *key, size_t klen, uint32_t hash, uint32_t **link) {
  uint32_t *slot = &shd_buckets(d)[hash & (d->nbuckets - 1)];
  while (*slot) {
    entry_t *e = shd_entry(d, *slot);
    if (e->hash == hash && e->klen == klen) {
      shd_cur_t c;
      shd_cur_init(&c, d, *slot, ENTRY_HDR);
      if (shd_cur_equal(&c, key, klen)) {
        if (link) *link = slot;
        return *slot;
      }
    }
    slot = &e->hnext;
  }
  return 0;
}

void shd_remove(shdict_t *d, uint32_t i) {
  entry_t *e = shd_entry(d, i);
  uint32_t *slot = &shd_buckets(d)[e->hash & (d->nbuckets - 1)];
  while (*slot && *slot != i) slot = &shd_entry(d, *slot)->hnext;
  if (*slot) __atomic_store_n(slot, e->hnext, __ATOMIC_RELEASE); /* the commit point: gone from here */
  shd_lru_unlink(d, i);
  d->nkeys--;
  if (e->type == SHD_TLIST) {
    for (uint32_t el = e->aux, nx; el; el = nx) {
      nx = shd_elem(d, el)->enext;
      shd_free(d, el);
    }
  }
  shd_free(d, i);
}

int shd_make_room(shdict_t *d, uint32_t n, int safe, int *forcible) {
  while (d->nfree < n) {
    uint32_t t = d->lru_tail;
    if (t == 0) return SHD_ENOMEM;
    if (!shd_dead(shd_entry(d, t))) {
      if (safe) return SHD_ENOMEM;
      if (forcible) *forcible = 1;
    }
    shd_remove(d, t);
  }
  return 0;
}

int64_t shd_value_len(const shdict_val_t *v) {
  switch (v->type) {
  case SHD_TSTRING: return (int64_t)v->len;
  case SHD_TNUMBER: return (int64_t)sizeof(double);
  case SHD_TBOOLEAN: return 1;
  default: return -1;
  }
}

void shd_write_value(shd_cur_t *c, const shdict_val_t *v, const char *str) {
  if (v->type == SHD_TSTRING) {
    shd_cur_write(c, str, v->len);
  } else if (v->type == SHD_TNUMBER) {
    shd_cur_write(c, &v->num, sizeof v->num);
  } else {
    char b = v->num != 0;
    shd_cur_write(c, &b, 1);
  }
}

int shd_read_value(shd_cur_t *c, int type, size_t vlen, shdict_val_t *v, char *buf, size_t buflen) {
  v->type = type;
  v->len = vlen;
  if (type == SHD_TSTRING) {
    if (vlen > buflen) return SHD_EBUF;
    shd_cur_read(c, buf, vlen);
  } else if (type == SHD_TNUMBER) {
    shd_cur_read(c, &v->num, sizeof v->num);
  } else {
    char b = 0;
    shd_cur_read(c, &b, 1);
    v->num = b != 0;
  }
  return 0;
}

static int check_key(size_t klen) { return klen == 0 || klen > SHD_KEY_MAX ? SHD_EKEY : 0; }

/* --- operations -------------------------------------------------------------------------------- */

static int get_locked(shdict_t *d, const char *key, size_t klen, int stale, shdict_val_t *v, char *buf,
                      size_t buflen) {
  uint32_t i = shd_find(d, key, klen, shd_hash(key, klen), NULL);
  if (i == 0) return SHD_ENOTFOUND;
  entry_t *e = shd_entry(d, i);
  v->stale = shd_dead(e);
  if (v->stale && !stale) return SHD_ENOTFOUND;
  if (e->type == SHD_TLIST) return SHD_ELIST;
  v->flags = e->flags;
  shd_cur_t c;
  shd_cur_init(&c, d, i, ENTRY_HDR);
  shd_cur_skip(&c, klen);
  int r = shd_read_value(&c, e->type, e->vlen, v, buf, buflen);
  if (r == 0 && !v->stale && d->lru_head != i) {
    shd_lru_unlink(d, i);
    shd_lru_push(d, i);
  }
  return r;
}

int shdict_get(shdict_t *d, const char *key, size_t klen, int stale, shdict_val_t *v, char *buf,
               size_t buflen) {
  if (check_key(klen)) return SHD_EKEY;
  if (shdict_lock(d)) return SHD_ELOCK;
  int r = get_locked(d, key, klen, stale, v, buf, buflen);
  shdict_unlock(d);
  return r;
}

static uint64_t expire_at(int64_t ms) { return ms > 0 ? shd_now() + (uint64_t)ms : 0; }

/* Makes a new entry for key (not linked yet is never visible: it is linked last). Returns its chunk,
 * 0 with *r set when there is no room. */
static uint32_t entry_new(shdict_t *d, const char *key, size_t klen, uint32_t hash, const shdict_val_t *v,
                          const char *str, int64_t ms, int safe, int *forcible, int *r) {
  int64_t vlen = shd_value_len(v);
  uint32_t n = shd_nchunks(ENTRY_HDR, klen + (size_t)vlen);
  if (n > d->nchunks - 1) {
    *r = SHD_ENOMEM;
    return 0;
  }
  if ((*r = shd_make_room(d, n, safe, forcible)) != 0) return 0;
  uint32_t i = shd_alloc(d, n);
  entry_t *e = shd_entry(d, i);
  e->hash = hash, e->klen = (uint32_t)klen, e->vlen = (uint32_t)vlen, e->flags = v->flags;
  e->expire = expire_at(ms), e->type = (uint8_t)v->type, e->aux = 0, e->lprev = e->lnext = 0;
  shd_cur_t c;
  shd_cur_init(&c, d, i, ENTRY_HDR);
  shd_cur_write(&c, key, klen);
  shd_write_value(&c, v, str);
  uint32_t *b = &shd_buckets(d)[hash & (d->nbuckets - 1)];
  e->hnext = *b;
  __atomic_store_n(b, i, __ATOMIC_RELEASE); /* the commit point: everything above is written first */
  shd_lru_push(d, i);
  d->nkeys++;
  return i;
}

static int store_locked(shdict_t *d, int op, const char *key, size_t klen, const shdict_val_t *v,
                        const char *str, int64_t ms, int *forcible) {
  uint32_t hash = shd_hash(key, klen);
  uint32_t old = shd_find(d, key, klen, hash, NULL);
  int live = old && !shd_dead(shd_entry(d, old));
  if ((op == SHD_ADD || op == SHD_SAFE_ADD) && live) return SHD_EEXISTS;
  if (op == SHD_REPLACE && !live) return SHD_ENOTFOUND;
  if (v->type == SHD_TNIL) {
    if (old) shd_remove(d, old);
    return 0;
  }
  if (shd_value_len(v) < 0) return SHD_EVALUE;
  int safe = op == SHD_SAFE_SET || op == SHD_SAFE_ADD, r;
  uint32_t need = shd_nchunks(ENTRY_HDR, klen + (size_t)shd_value_len(v));
  if (old && (d->nfree < need || !live)) { /* its chunks are needed now (or it is dead anyway) */
    shd_remove(d, old);
    old = 0;
  }
  if (entry_new(d, key, klen, hash, v, str, ms, safe, forcible, &r) == 0) return r;
  if (old) shd_remove(d, old);
  return 0;
}

int shdict_store(shdict_t *d, int op, const char *key, size_t klen, const shdict_val_t *v,
                 const char *str, int64_t exptime_ms, int *forcible) {
  int f = 0;
  if (check_key(klen)) return SHD_EKEY;
  if (shdict_lock(d)) return SHD_ELOCK;
  int r = store_locked(d, op, key, klen, v, str, exptime_ms, &f);
  shdict_unlock(d);
  if (forcible) *forcible = f;
  return r;
}

static int incr_locked(shdict_t *d, const char *key, size_t klen, double by, int has_init, double init,
                       int64_t ttl, double *out, int *forcible) {
  uint32_t hash = shd_hash(key, klen);
  uint32_t i = shd_find(d, key, klen, hash, NULL);
  if (i && shd_dead(shd_entry(d, i))) {
    shd_remove(d, i);
    i = 0;
  }
  if (i == 0) {
    if (!has_init) return SHD_ENOTFOUND;
    shdict_val_t v = {.type = SHD_TNUMBER, .num = init + by};
    int r;
    if (entry_new(d, key, klen, hash, &v, NULL, ttl, 0, forcible, &r) == 0) return r;
    *out = v.num;
    return 0;
  }
  entry_t *e = shd_entry(d, i);
  if (e->type != SHD_TNUMBER) return SHD_ENOTNUM;
  shd_cur_t c, w;
  double n;
  shd_cur_init(&c, d, i, ENTRY_HDR);
  shd_cur_skip(&c, klen);
  w = c;
  shd_cur_read(&c, &n, sizeof n);
  n += by;
  shd_cur_write(&w, &n, sizeof n);
  if (d->lru_head != i) shd_lru_unlink(d, i), shd_lru_push(d, i);
  *out = n;
  return 0;
}

int shdict_incr(shdict_t *d, const char *key, size_t klen, double by, int has_init, double init,
                int64_t init_ttl_ms, double *out, int *forcible) {
  int f = 0;
  if (check_key(klen)) return SHD_EKEY;
  if (shdict_lock(d)) return SHD_ELOCK;
  int r = incr_locked(d, key, klen, by, has_init, init, init_ttl_ms, out, &f);
  shdict_unlock(d);
  if (forcible) *forcible = f;
  return r;
}

/* ttl (set < 0) or expire (set >= 0: the new time to live in ms, 0 = never). */
static int ttl_op(shdict_t *d, const char *key, size_t klen, int64_t set, int64_t *ms) {
  if (check_key(klen)) return SHD_EKEY;
  if (shdict_lock(d)) return SHD_ELOCK;
  int r = SHD_ENOTFOUND;
  uint32_t i = shd_find(d, key, klen, shd_hash(key, klen), NULL);
  uint64_t now = shd_now();
  if (i && !shd_expired(shd_entry(d, i), now)) {
    entry_t *e = shd_entry(d, i);
    if (set >= 0) e->expire = set > 0 ? now + (uint64_t)set : 0;
    else *ms = e->expire ? (int64_t)(e->expire - now) : 0;
    r = 0;
  }
  shdict_unlock(d);
  return r;
}

int shdict_ttl(shdict_t *d, const char *key, size_t klen, int64_t *ms) { return ttl_op(d, key, klen, -1, ms); }

int shdict_expire(shdict_t *d, const char *key, size_t klen, int64_t ms) {
  return ttl_op(d, key, klen, ms < 0 ? 0 : ms, NULL);
}

/* As OpenResty does: every entry expires now (get_stale still sees it; sets and flush_expired take
 * the memory back). */
int shdict_flush_all(shdict_t *d) {
  if (shdict_lock(d)) return SHD_ELOCK;
  for (uint32_t i = d->lru_head; i; i = shd_entry(d, i)->lnext) shd_entry(d, i)->expire = 1;
  shdict_unlock(d);
  return 0;
}

uint32_t shdict_buckets(const shdict_t *d) { return d->nbuckets; }
uint64_t shdict_capacity(const shdict_t *d) { return d->size; }
uint64_t shdict_free_space(const shdict_t *d) { return (uint64_t)d->nfree * CHUNK; }

void shdict_stats(const shdict_t *d, shdict_stats_t *st) {
  st->capacity = d->size;
  st->free = (uint64_t)d->nfree * CHUNK;
  st->used = (uint64_t)(d->nchunks - 1 - d->nfree) * CHUNK;
  st->keys = d->nkeys;
  st->recoveries = d->recoveries;
}
