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
 * after the message under way (chanset_later_add), so every member gets a channel's messages in one order. */
#include "ws_chan.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "chanset.h"
#include "util.h"
#include "ws_deflate.h"
#include "ws_frame.h"

static chanset_t ws_chans; /* this worker's WebSocket channels */

static chanset_member_t **subs_of(ws_conn_t *c) { return (chanset_member_t **)ws_conn_subs(c); }

int ws_chan_join(ws_conn_t *c, const char *name, size_t n) { return chanset_join(&ws_chans, subs_of(c), c, 0, name, n); }

int ws_chan_leave(ws_conn_t *c, const char *name, size_t n) { return chanset_leave(&ws_chans, subs_of(c), name, n); }

void ws_chan_leave_all(ws_conn_t *c) { chanset_leave_all(&ws_chans, subs_of(c)); }

size_t ws_chan_count(const char *name, size_t n) { return chanset_count(&ws_chans, name, n); }

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

/* The members are written from a start that rotates from one publish to the next (chanset_walk_init):
 * no member is always written last (a fan-out to 500 sockets takes milliseconds: the last would always
 * wait the longest). Each member still gets each message once. */
static size_t chan_write(chanset_chan_t *ch, int opcode, const char *p, size_t len) {
  publish_t pub;
  char stack[WS_CHAN_FRAME_STACK];
  if (publish_init(&pub, opcode, p, len, stack) != 0) return 0;
  size_t sent = 0;
  chanset_walk_t w;
  chanset_walk_init(&w, ch); /* (members who join meanwhile wait for the next message) */
  for (chanset_member_t *m; (m = chanset_walk_next(&w)) != NULL;) sent += (size_t)member_send(m->owner, &pub);
  publish_done(&pub, stack);
  return sent;
}

/* A publish to a channel that is being published to: a member's write failed and its close listener
 * published again. Written at once, it would reach the members not written yet before the message
 * under way: it is kept and written after it (chanset_later_add). Returns the members it is for. */
size_t ws_chan_publish(const char *name, size_t n, int opcode, const char *p, size_t len) {
  chanset_chan_t *ch = chanset_find(&ws_chans, name, n);
  if (ch == NULL) return 0;
  if (ch->busy) return chanset_later_add(ch, opcode, p, len) == 0 ? chanset_chan_count(ch) : 0;
  chanset_begin(ch);
  size_t sent = chan_write(ch, opcode, p, len);
  for (chanset_later_t *l; (l = chanset_later_take(ch)) != NULL; free(l)) chan_write(ch, l->kind, l->data, l->len);
  chanset_end(&ws_chans, ch);
  return sent;
}
