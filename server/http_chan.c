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

#include "chanset.h"
#include "http_internal.h"

static chanset_t http_chans; /* this worker's channels of HTTP responses */

/* connection -> its first membership; a slot is free when c is NULL */
typedef struct {
  http_conn_t *c;
  chanset_member_t *m;
} owner_t;

static struct {
  owner_t *slots;
  size_t cap, count; /* cap: a power of two, kept at least twice count */
} owners;

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

static owner_t *owner_put(http_conn_t *c, chanset_member_t *m) {
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

/* ---- memberships --------------------------------------------------------------------------- */

int http_chan_join(http_conn_t *c, uint32_t gen, const char *name, size_t n) {
  if (c == NULL || c->closing || c->state != HTTP_CONN_HANDLING || gen != c->gen) return UV_EPIPE;
  if (!c->head_sent || c->is_head || c->status < 200 || c->status == 204 || c->status == 304 || c->clen_left >= 0)
    return UV_EINVAL;
  owner_t *o = c->in_chan ? owner_find(c) : NULL;
  if (o == NULL && owners_reserve() != 0) return UV_ENOMEM; /* (room for c's slot, taken below) */
  chanset_member_t *list = o ? o->m : NULL;
  int r = chanset_join(&http_chans, &list, c, gen, name, n);
  if (r != 1) return r;
  if (o) o->m = list;
  else owner_put(c, list);
  c->in_chan = 1;
  return 1;
}

int http_chan_leave(http_conn_t *c, const char *name, size_t n) {
  owner_t *o = c && c->in_chan ? owner_find(c) : NULL;
  if (o == NULL || chanset_leave(&http_chans, &o->m, name, n) == 0) return 0;
  if (o->m == NULL) {
    owner_del(o);
    c->in_chan = 0;
  }
  return 1;
}

void http_chan_leave_all(http_conn_t *c) {
  owner_t *o = c->in_chan ? owner_find(c) : NULL;
  c->in_chan = 0;
  if (o == NULL) return;
  chanset_member_t *m = o->m;
  owner_del(o);
  chanset_leave_all(&http_chans, &m);
}

size_t http_chan_count(const char *name, size_t n) { return chanset_count(&http_chans, name, n); }

/* ---- publish ------------------------------------------------------------------------------- */

/* Writes one piece to a member: 1 when written, 0 when not (gone, or cut off as too slow). */
static int member_send(const chanset_member_t *m, const uv_buf_t *plain, const uv_buf_t *chunk, size_t len) {
  http_conn_t *c = m->owner;
  if (c->closing || c->state != HTTP_CONN_HANDLING || c->gen != m->tag) return 0;
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
  chanset_chan_t *ch = chanset_find(&http_chans, name, n);
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
  chanset_begin(ch);
  size_t sent = 0;
  chanset_walk_t w;
  chanset_walk_init(&w, ch);
  for (chanset_member_t *m; (m = chanset_walk_next(&w)) != NULL;) sent += (size_t)member_send(m, &plain, &chunk, len);
  chanset_end(&http_chans, ch);
  if (f != stack) free(f);
  return sent;
}
