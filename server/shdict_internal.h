/* shdict_internal.h -- the layout of a shared dict and the helpers its files share (shdict*.c only).
 *
 * The region is a header, a bucket array and fixed 64-byte chunks. Every item (an entry, a list
 * element) is a chain of chunks, so any free chunk fits any request: free space never fragments
 * (OpenResty's "no memory" while memory is free). Chunk 0 is never used; index 0 means "none".
 * Links are chunk indexes, never pointers: each process maps the region at its own address. Chunks
 * are handed out from the free list, else from the never-used end, so a dict's memory is touched (and
 * committed) only as it fills: a 1 GB dict costs nothing at start. */
#ifndef MOONFORK_SHDICT_INTERNAL_H
#define MOONFORK_SHDICT_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "shdict.h"

#define SHD_MAGIC 0x6d66736864637431ULL /* "mfshdct1" */
#define CHUNK 64
#define ENTRY_HDR 48 /* bytes before an entry's first data byte */
#define ELEM_HDR 20  /* ... a list element's */
#define CONT_HDR 4   /* ... a continuation chunk's */

struct shdict_s {
  uint64_t magic;
  uint64_t size;
  uint64_t buckets_off, chunks_off; /* from the start of the header */
  uint32_t nchunks, nbuckets;       /* nbuckets: a power of two */
  uint32_t lock;                    /* the owner's pid, 0 when free (shdict_lock.c) */
  uint32_t repair;                  /* an owner died holding the lock: rebuild before use */
  uint32_t free_head, nfree;        /* nfree: the free list plus the chunks from `fresh` on */
  uint32_t fresh;                   /* chunks from here on were never used (and never touched) */
  uint32_t lru_head, lru_tail;      /* head: most recently used */
  uint32_t nkeys;
  uint64_t recoveries;
};

/* The first chunk of an entry. */
typedef struct {
  uint32_t next;   /* the item's next chunk */
  uint32_t hnext;  /* the next entry in the bucket */
  uint32_t lprev, lnext;
  uint32_t hash, klen;
  uint32_t vlen;   /* lists: the element count */
  uint32_t flags;  /* lists: the last element */
  uint64_t expire; /* ms on the dict's clock, 0 = never */
  uint8_t type, pad[3];
  uint32_t aux;    /* lists: the first element */
  char data[CHUNK - ENTRY_HDR];
} entry_t;

/* The first chunk of a list element. */
typedef struct {
  uint32_t next, eprev, enext, vlen;
  uint8_t type, pad[3];
  char data[CHUNK - ELEM_HDR];
} elem_t;

typedef struct {
  uint32_t next;
  char data[CHUNK - CONT_HDR];
} cont_t;

_Static_assert(sizeof(entry_t) == CHUNK && sizeof(elem_t) == CHUNK && sizeof(cont_t) == CHUNK,
               "chunk layouts");

static inline void *shd_chunk(const shdict_t *d, uint32_t i) {
  return (char *)d + d->chunks_off + (size_t)i * CHUNK;
}
static inline entry_t *shd_entry(const shdict_t *d, uint32_t i) { return shd_chunk(d, i); }
static inline elem_t *shd_elem(const shdict_t *d, uint32_t i) { return shd_chunk(d, i); }
static inline uint32_t *shd_buckets(const shdict_t *d) {
  return (uint32_t *)((char *)d + d->buckets_off);
}
/* Chunks an item of n data bytes takes when its first chunk has a header of hsz bytes. */
static inline uint32_t shd_nchunks(size_t hsz, size_t n) {
  size_t first = CHUNK - hsz;
  return n <= first ? 1 : 1 + (uint32_t)((n - first + (CHUNK - CONT_HDR) - 1) / (CHUNK - CONT_HDR));
}

/* A cursor over an item's data bytes across its chunks. */
typedef struct {
  const shdict_t *d;
  uint32_t idx;
  char *p;
  size_t left;
} shd_cur_t;

void shd_cur_init(shd_cur_t *c, const shdict_t *d, uint32_t idx, size_t hsz);
void shd_cur_write(shd_cur_t *c, const void *src, size_t n);
void shd_cur_read(shd_cur_t *c, void *dst, size_t n);
int shd_cur_equal(shd_cur_t *c, const void *src, size_t n);
void shd_cur_skip(shd_cur_t *c, size_t n);

uint32_t shd_hash(const char *key, size_t n);
uint64_t shd_now(void);
uint32_t shd_alloc(shdict_t *d, uint32_t n);
void shd_free(shdict_t *d, uint32_t idx);
void shd_lru_unlink(shdict_t *d, uint32_t i);
void shd_lru_push(shdict_t *d, uint32_t i);
/* Finds a key's entry (expired or not); *link (may be NULL) gets the slot pointing at it. */
uint32_t shd_find(shdict_t *d, const char *key, size_t klen, uint32_t hash, uint32_t **link);
/* Unlinks entry i from its bucket and the LRU and frees it (with a list's elements). */
void shd_remove(shdict_t *d, uint32_t i);
/* Frees chunks until n are free: expired entries from the LRU tail, then (unless safe) live ones
 * (setting *forcible). Returns 0 or SHD_ENOMEM. */
int shd_make_room(shdict_t *d, uint32_t n, int safe, int *forcible);
/* Reads an item's value into v/buf (after the cursor reached it). */
int shd_read_value(shd_cur_t *c, int type, size_t vlen, shdict_val_t *v, char *buf, size_t buflen);
/* Bytes a value takes, or -1 for a bad type. */
int64_t shd_value_len(const shdict_val_t *v);
void shd_write_value(shd_cur_t *c, const shdict_val_t *v, const char *str);
/* Rebuilds free list, LRU and counts from the buckets, dropping whatever does not check out. */
void shd_repair(shdict_t *d);
/* Formats the chunks as all free and the buckets as empty. */
void shd_format(shdict_t *d);

static inline int shd_expired(const entry_t *e, uint64_t now) { return e->expire != 0 && e->expire <= now; }
/* Has e expired by now? Reads the clock only for an entry that can expire (the common hot path has none). */
static inline int shd_dead(const entry_t *e) { return e->expire != 0 && e->expire <= shd_now(); }

#endif
