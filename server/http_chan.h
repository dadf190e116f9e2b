/* http_chan.h -- channels of open HTTP responses (SSE streams) in a worker: res:subscribe,
 * res:unsubscribe and moonfork.http.publish. Worker-local: a publish reaches this worker's members
 * only; carrying a message to the other workers is the script's (nodes:broadcast). */
#ifndef MOONFORK_HTTP_CHAN_H
#define MOONFORK_HTTP_CHAN_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"

/* The response to request `gen` on c joins channel name[0..n): 1, 0 when it is a member already,
 * UV_EPIPE when the response is over, UV_EINVAL when its head has not been sent or its body cannot
 * take more (a HEAD request, 204, 304, a Content-Length), UV_ENOMEM. */
int http_chan_join(http_conn_t *c, uint32_t gen, const char *name, size_t n);
/* The response leaves the channel: 1, or 0 when it was not a member. */
int http_chan_leave(http_conn_t *c, const char *name, size_t n);
/* c's response leaves every channel (it ended, or the connection closed: http_conn.c calls this). */
void http_chan_leave_all(http_conn_t *c);
/* Writes p[0..len) as body bytes to every member in this worker (the chunk framing made once), in an
 * order that rotates from one publish to the next. A member whose send queue is over HTTP_HIGH_WATER
 * is closed instead (its client reconnects and resumes). Returns how many members it was written to. */
size_t http_chan_publish(const char *name, size_t n, const char *p, size_t len);
/* Members of the channel in this worker. */
size_t http_chan_count(const char *name, size_t n);

#endif
