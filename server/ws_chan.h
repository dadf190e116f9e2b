/* ws_chan.h -- channels of WebSocket connections in a worker: moonfork.websocket's subscribe, unsubscribe
 * and publish. A publish here reaches this worker's members; the Lua half carries it to the other
 * workers (the mesh) or hosts (Redis) in an envelope (ws_frame.h) that each of them publishes here. */
#ifndef MOONFORK_WS_CHAN_H
#define MOONFORK_WS_CHAN_H

#include <stddef.h>

#include "ws_conn.h"

/* c joins channel name[0..n): 1, 0 when it is a member already, UV_ENOMEM. */
int ws_chan_join(ws_conn_t *c, const char *name, size_t n);
/* c leaves the channel: 1, or 0 when it was not a member. */
int ws_chan_leave(ws_conn_t *c, const char *name, size_t n);
/* c leaves every channel (it closes: ws_conn.c calls this before telling the binding). */
void ws_chan_leave_all(ws_conn_t *c);
/* Sends one message (WS_OP_TEXT or WS_OP_BINARY) to every member of the channel in this worker, the
 * frame made once, in an order that rotates from one message to the next (see ws_chan.c). A member
 * whose send queue is over WS_HIGH_WATER is closed with 1008 instead. Returns how many members it was
 * written to. Called during a publish to the same channel (from a close listener), it copies the
 * message and writes it after the one under way; it returns the members it is for. */
size_t ws_chan_publish(const char *name, size_t n, int opcode, const char *p, size_t len);
/* Members of the channel in this worker. */
size_t ws_chan_count(const char *name, size_t n);

#define WS_CLOSE_TOO_SLOW 1008 /* policy violation: the member does not read fast enough */

#endif
