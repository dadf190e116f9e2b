/* shdict.h -- a dictionary in shared memory: hash, LRU, expiry and a chunk allocator over one region. */
#ifndef MOONFORK_SHDICT_H
#define MOONFORK_SHDICT_H

#include <stddef.h>
#include <stdint.h>

/* Value types: the numbers lua-resty-core uses for ngx.shared.DICT (Lua's own type tags). */
enum { SHD_TNIL = 0, SHD_TBOOLEAN = 1, SHD_TNUMBER = 3, SHD_TSTRING = 4, SHD_TLIST = 5 };

/* Results: 0, or one of these (each has a fixed message, shdict_strerror). */
enum {
  SHD_OK = 0,
  SHD_ENOMEM = -1,    /* "no memory" */
  SHD_EEXISTS = -2,   /* "exists" */
  SHD_ENOTFOUND = -3, /* "not found" */
  SHD_ENOTNUM = -4,   /* "not a number" */
  SHD_ELIST = -5,     /* "value is a list" */
  SHD_ENOTLIST = -6,  /* "value not a list" */
  SHD_EKEY = -7,      /* "empty key" or "key too long" */
  SHD_EBUF = -8,      /* the caller's buffer is too small: v->len says how much is needed */
  SHD_ELOCK = -9,     /* the lock is unusable */
  SHD_EVALUE = -10,   /* a bad value type */
};

/* The store operations of shdict_store. */
enum { SHD_SET = 0, SHD_SAFE_SET = 1, SHD_ADD = 2, SHD_SAFE_ADD = 3, SHD_REPLACE = 4 };

#define SHD_KEY_MAX 65535
#define SHD_MIN_SIZE (32 * 1024)

typedef struct shdict_s shdict_t;

/* A value going in or coming out. Strings travel in a separate buffer of `len` bytes. */
typedef struct {
  int32_t type;     /* SHD_T* */
  uint32_t flags;   /* the user's flags */
  int32_t stale;    /* out: the entry had expired (get_stale) */
  int32_t forcible; /* out: live entries were evicted to make room */
  double num;       /* numbers; booleans as 0/1 */
  uint64_t len;     /* strings: bytes */
} shdict_val_t;

typedef struct {
  uint64_t capacity; /* bytes of the region */
  uint64_t used;     /* bytes of chunks holding entries */
  uint64_t free;     /* bytes of free chunks */
  uint64_t keys;
  uint64_t recoveries; /* times a process found the lock's owner dead and repaired the dict */
} shdict_stats_t;

/* Formats [mem, mem+size) as an empty dict (size >= SHD_MIN_SIZE). Returns 0, or -1 (size too small). */
int shdict_init(void *mem, size_t size);
/* The dict that shdict_init formatted at mem, or NULL when mem does not hold one of this size. */
shdict_t *shdict_open(void *mem, size_t size);
/* The clock expiry uses, in ms (tests inject one; NULL: CLOCK_MONOTONIC, the same in every process). */
void shdict_set_clock(uint64_t (*now_ms)(void));
const char *shdict_strerror(int r);

/* get / get_stale: fills v; strings are copied into buf (SHD_EBUF when buflen < v->len). */
int shdict_get(shdict_t *d, const char *key, size_t klen, int stale, shdict_val_t *v, char *buf,
               size_t buflen);
/* set, safe_set, add, safe_add, replace (op); a SHD_TNIL value deletes. exptime_ms 0 = never.
 * *forcible is set when live entries were evicted. */
int shdict_store(shdict_t *d, int op, const char *key, size_t klen, const shdict_val_t *v,
                 const char *str, int64_t exptime_ms, int *forcible);
/* incr: *out = value + by. A missing key starts at init when has_init (with init_ttl_ms), else
 * SHD_ENOTFOUND. */
int shdict_incr(shdict_t *d, const char *key, size_t klen, double by, int has_init, double init,
                int64_t init_ttl_ms, double *out, int *forcible);
/* lpush (left) / rpush: *len = the list's new length. */
int shdict_push(shdict_t *d, const char *key, size_t klen, int left, const shdict_val_t *v,
                const char *str, int64_t *len);
/* lpop / rpop: as shdict_get; SHD_ENOTFOUND for a missing or empty list. */
int shdict_pop(shdict_t *d, const char *key, size_t klen, int left, shdict_val_t *v, char *buf,
               size_t buflen);
int shdict_llen(shdict_t *d, const char *key, size_t klen, int64_t *len);
/* ttl: *ms left, 0 = never expires. */
int shdict_ttl(shdict_t *d, const char *key, size_t klen, int64_t *ms);
/* expire: a new time to live (0 = never). */
int shdict_expire(shdict_t *d, const char *key, size_t klen, int64_t ms);
/* flush_all: every entry expires now (memory comes back lazily, or with flush_expired). */
int shdict_flush_all(shdict_t *d);
/* Removes up to max expired entries (0 = all); returns how many. */
int shdict_flush_expired(shdict_t *d, int max);
/* get_keys in steps that each hold the lock briefly: appends live keys of the buckets from *cursor on
 * to buf as (uint32_t length, bytes) records, at most max keys, stopping before a bucket whose keys do
 * not fit. Returns the count; *cursor moves on (== shdict_buckets(d) when done); *used = bytes used.
 * SHD_EBUF when the first bucket alone does not fit (*used = bytes needed). */
int shdict_keys(shdict_t *d, uint32_t *cursor, int max, char *buf, size_t buflen, size_t *used);
uint32_t shdict_buckets(const shdict_t *d);
uint64_t shdict_capacity(const shdict_t *d);
uint64_t shdict_free_space(const shdict_t *d);
/* Counters, read without the lock (each is one word). */
void shdict_stats(const shdict_t *d, shdict_stats_t *st);

/* The lock, for callers that group operations and for tests: shdict_lock repairs the dict when the
 * last owner died holding it. Returns 0 or SHD_ELOCK. */
int shdict_lock(shdict_t *d);
void shdict_unlock(shdict_t *d);
/* The master, once it reaped process pid: if pid held d's lock, releases it and marks d for repair by
 * its next user. Returns 1 when it did. */
int shdict_owner_died(shdict_t *d, int pid);
/* Checks every invariant (chains, LRU, lists, free list, counts); returns 0 or a line number > 0 of
 * shdict_repair.c naming the broken one. For tests; takes no lock. */
int shdict_check(shdict_t *d);

#endif
