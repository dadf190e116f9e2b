/* ws_chan.c -- channels of WebSocket connections: one published message to every member in this worker.
 *
 * Why in C: a broadcast to 1,000 members from Lua is 1,000 calls into C, each building the same frame
 * head and, with permessage-deflate, compressing the same message. Here the frame (head and payload
 * in one piece) is built once and every uncompressed member is written the same bytes with one send(2)
 * and no copy (mf_writeq copies only what the kernel does not take at once). A member that negotiated server_no_context_takeover resets its compressor after every
 * message, so the message compresses to the same bytes for all such members with the same window: it
 * is compressed once for them (ws_deflate_shared_key). A member whose compressor keeps its context
 * gets its own deflate: that state is its own.
 *
 * The order: a fan-out is one send(2) per member, about 7 us each on loopback (92% of it in the
 * kernel's TCP), so the last of 500 members is written milliseconds after the first. Written in a
 * fixed order, the same members were always last (measured: the last five joined were in the slowest
 * 1% of deliveries in 27 of the 29 messages that made it; their median was 7.8 ms, the first
 * members' 0.2). Each publish starts at another place in the array (ws_chan_publish).
 *
 * A slow member: one whose send queue is over WS_HIGH_WATER (256 KiB) when a message comes is closed
 * with 1008 "subscriber too slow", not skipped and not queued without end. Skipping would lose
 * messages on a connection that stays open, which a chat client cannot see; queueing grows the
 * worker's memory with every message the member cannot take. Closed, the client reconnects and
 * resumes from the last message it saw, as the chat does after a reload.
 *
 * Members leave when their connection closes (ws_conn.c's conn_tell calls ws_chan_leave_all), or at
 * once when closed as too slow, and an empty channel is freed. A connection that closes during a
 * publish (its write failed, and its "close" listener runs then and may publish or subscribe) leaves a
 * hole in the member array, filled after; what that listener publishes to the same channel is written
 * after the message under way (chan_later), so every member gets a channel's messages in one order. */
#include "ws_chan.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "util.h"
#include "ws_deflate.h"
#include "ws_frame.h"

typedef struct ws_chan_s ws_chan_t;
typedef struct ws_member_s ws_member_t;
typedef struct ws_later_s ws_later_t;

struct ws_member_s {
  ws_chan_t *chan;
  ws_conn_t *conn;   /* NULL: it left during a publish (a hole, freed after it) */
  ws_member_t *next; /* the connection's next membership */
  size_t idx;        /* its place in chan->members */
};

/* A message published to a channel while it was being published to (by a close listener): a copy,
 * written to the members once the publish under way is done. */
struct ws_later_s {
  ws_later_t *next;
  int opcode;
  size_t len;
  char data[];
};

struct ws_chan_s {
  ws_chan_t *next;   /* in its hash bucket */
  ws_member_t **members;
  size_t n, cap;
  unsigned busy;     /* a publish is under way (a close listener may publish again: see later) */
  ws_later_t *later, **later_tail; /* what was published meanwhile, in order */
  unsigned holes;
  uint32_t rot;      /* where the next publish starts writing: moves on by the golden ratio each time */
  uint32_t hash;
  size_t nlen;
  char name[];
};

static struct {
  ws_chan_t **buckets;
  size_t nbuckets, count;
} chans;

static uint32_t name_hash(const char *p, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

static ws_chan_t **bucket_of(uint32_t h) { return &chans.buckets[h & (chans.nbuckets - 1)]; }

static ws_chan_t *chan_find(const char *name, size_t n, uint32_t h) {
  if (chans.nbuckets == 0) return NULL;
  for (ws_chan_t *ch = *bucket_of(h); ch; ch = ch->next)
    if (ch->hash == h && ch->nlen == n && memcmp(ch->name, name, n) == 0) return ch;
  return NULL;
}

/* Doubles the buckets once there are as many channels (the table starts at 64). 0 or UV_ENOMEM. */
static int buckets_grow(void) {
  size_t nb = chans.nbuckets ? chans.nbuckets * 2 : 64;
  ws_chan_t **b = calloc(nb, sizeof *b);
  if (b == NULL) return UV_ENOMEM;
  for (size_t i = 0; i < chans.nbuckets; i++) {
    for (ws_chan_t *ch = chans.buckets[i], *next; ch; ch = next) {
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

static ws_chan_t *chan_new(const char *name, size_t n, uint32_t h) {
  if (chans.count >= chans.nbuckets && buckets_grow() != 0) return NULL;
  ws_chan_t *ch = calloc(1, sizeof *ch + n);
  if (ch == NULL) return NULL;
  memcpy(ch->name, name, n);
  ch->nlen = n;
  ch->hash = h;
  ch->later_tail = &ch->later;
  ws_chan_t **b = bucket_of(h);
  ch->next = *b;
  *b = ch;
  chans.count++;
  return ch;
}

static void chan_free_if_empty(ws_chan_t *ch) {
  if (ch->n > 0 || ch->busy) return;
  for (ws_chan_t **pp = bucket_of(ch->hash); *pp; pp = &(*pp)->next) {
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
static void member_drop(ws_member_t *m) {
  ws_chan_t *ch = m->chan;
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

/* After the last publish under way: the holes go, the array closes up. */
static void chan_compact(ws_chan_t *ch) {
  size_t j = 0;
  for (size_t i = 0; i < ch->n; i++) {
    ws_member_t *m = ch->members[i];
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

int ws_chan_join(ws_conn_t *c, const char *name, size_t n) {
  ws_member_t **subs = (ws_member_t **)ws_conn_subs(c);
  for (ws_member_t *m = *subs; m; m = m->next)
    if (m->chan->nlen == n && memcmp(m->chan->name, name, n) == 0) return 0;
  uint32_t h = name_hash(name, n);
  ws_chan_t *ch = chan_find(name, n, h);
  if (ch == NULL && (ch = chan_new(name, n, h)) == NULL) return UV_ENOMEM;
  ws_member_t *m = malloc(sizeof *m);
  if (m && ch->n == ch->cap) {
    size_t cap = ch->cap ? ch->cap * 2 : 8;
    ws_member_t **a = realloc(ch->members, cap * sizeof *a);
    if (a) ch->members = a, ch->cap = cap;
    else free(m), m = NULL;
  }
  if (m == NULL) {
    chan_free_if_empty(ch);
    return UV_ENOMEM;
  }
  *m = (ws_member_t){ch, c, *subs, ch->n};
  ch->members[ch->n++] = m;
  *subs = m;
  return 1;
}

int ws_chan_leave(ws_conn_t *c, const char *name, size_t n) {
  for (ws_member_t **pp = (ws_member_t **)ws_conn_subs(c); *pp; pp = &(*pp)->next) {
    ws_member_t *m = *pp;
    if (m->chan->nlen == n && memcmp(m->chan->name, name, n) == 0) {
      *pp = m->next;
      member_drop(m);
      return 1;
    }
  }
  return 0;
}

void ws_chan_leave_all(ws_conn_t *c) {
  ws_member_t **subs = (ws_member_t **)ws_conn_subs(c);
  while (*subs) {
    ws_member_t *m = *subs;
    *subs = m->next;
    member_drop(m);
  }
}

size_t ws_chan_count(const char *name, size_t n) {
  ws_chan_t *ch = chan_find(name, n, name_hash(name, n));
  return ch ? ch->n - ch->holes : 0;
}

/* One publish: the message, its plain frame head, and the compressed copies made so far, one per
 * window size (9-15) of the members that share them. */
typedef struct {
  int opcode;
  const char *p;
  size_t len, hlen;
  const char *frame; /* head and payload in one piece (on the stack, or malloc'd when larger) */
  uint8_t head[10];
  mf_buf_t z[7];
  uint8_t zhead[7][10];
  uint8_t zhlen[7];
} publish_t;

/* Writes the message to one member: 1 when written, 0 when not (closed, too slow). */
static int member_send(ws_conn_t *c, publish_t *pub) {
  if (ws_conn_queued(c) > WS_HIGH_WATER) {
    ws_conn_close(c, WS_CLOSE_TOO_SLOW, "subscriber too slow", 19);
    ws_chan_leave_all(c); /* at once: it gets nothing more */
    return 0;
  }
  ws_deflate_t *z = pub->len >= WS_DEFLATE_MIN ? ws_conn_deflate(c) : NULL;
  if (z == NULL) return ws_conn_send_frame(c, (const uint8_t *)pub->frame, pub->hlen + pub->len, NULL, 0) >= 0;
  int key = ws_deflate_shared_key(z);
  if (key < 9 || key > 15) return ws_conn_send(c, pub->opcode, pub->p, pub->len) >= 0; /* its own deflate */
  int k = key - 9;
  mf_buf_t *zb = &pub->z[k];
  if (pub->zhlen[k] == 0) {
    if (ws_deflate_message(z, (const uint8_t *)pub->p, pub->len, zb) != 0) return 0;
    pub->zhlen[k] = (uint8_t)ws_frame_head(pub->zhead[k], 1, 1, pub->opcode, zb->len);
  }
  return ws_conn_send_frame(c, pub->zhead[k], pub->zhlen[k], zb->data, zb->len) >= 0;
}

/* The frame's head, and head and payload in one piece: on the stack up to WS_CHAN_FRAME_STACK bytes,
 * else malloc'd (freed by publish_done). -1 when out of memory. */
#define WS_CHAN_FRAME_STACK 4096
static int publish_init(publish_t *pub, int opcode, const char *p, size_t len, char *stack) {
  memset(pub, 0, sizeof *pub);
  pub->opcode = opcode;
  pub->p = p;
  pub->len = len;
  pub->hlen = ws_frame_head(pub->head, 1, 0, opcode, len);
  char *f = pub->hlen + len <= WS_CHAN_FRAME_STACK ? stack : malloc(pub->hlen + len);
  if (f == NULL) return -1;
  memcpy(f, pub->head, pub->hlen);
  if (len) memcpy(f + pub->hlen, p, len);
  pub->frame = f;
  return 0;
}

static void publish_done(publish_t *pub, const char *stack) {
  for (int k = 0; k < 7; k++) mf_buf_free(&pub->z[k]);
  if (pub->frame != stack) free((void *)pub->frame);
}

/* The members are written in array order, from a start that moves on with every publish by the golden
 * ratio of the member count (rot is a fraction of 2^32): the order rotates so that no member is always
 * written last (a fan-out to 500 sockets takes milliseconds: the last would always wait the longest),
 * and over any few messages every member's turn falls early as often as late. Each member still gets
 * each message once: the publish visits every index below count exactly once. */
static size_t chan_write(ws_chan_t *ch, int opcode, const char *p, size_t len) {
  publish_t pub;
  char stack[WS_CHAN_FRAME_STACK];
  if (publish_init(&pub, opcode, p, len, stack) != 0) return 0;
  size_t sent = 0, count = ch->n; /* (members who join meanwhile wait for the next message) */
  size_t start = count ? (size_t)(((uint64_t)ch->rot * count) >> 32) : 0;
  ch->rot += 0x9E3779B9u;
  for (size_t j = 0, i = start; j < count; j++, i = i + 1 == count ? 0 : i + 1) {
    ws_conn_t *c = ch->members[i]->conn;
    if (c) sent += (size_t)member_send(c, &pub);
  }
  publish_done(&pub, stack);
  return sent;
}

/* A publish to a channel that is being published to: a member's write failed and its close listener
 * published again. Written at once, it would reach the members not written yet before the message
 * under way: it is kept and written after it. Returns the members it is for. */
static size_t chan_later(ws_chan_t *ch, int opcode, const char *p, size_t len) {
  ws_later_t *l = malloc(sizeof *l + len);
  if (l == NULL) return 0;
  l->next = NULL;
  l->opcode = opcode;
  l->len = len;
  if (len) memcpy(l->data, p, len);
  *ch->later_tail = l;
  ch->later_tail = &l->next;
  return ch->n - ch->holes;
}

size_t ws_chan_publish(const char *name, size_t n, int opcode, const char *p, size_t len) {
  ws_chan_t *ch = chan_find(name, n, name_hash(name, n));
  if (ch == NULL) return 0;
  if (ch->busy) return chan_later(ch, opcode, p, len);
  ch->busy = 1;
  size_t sent = chan_write(ch, opcode, p, len);
  while (ch->later) {
    ws_later_t *l = ch->later;
    if ((ch->later = l->next) == NULL) ch->later_tail = &ch->later;
    chan_write(ch, l->opcode, l->data, l->len);
    free(l);
  }
  ch->busy = 0;
  if (ch->holes) chan_compact(ch);
  else chan_free_if_empty(ch);
  return sent;
}
