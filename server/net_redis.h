/* net_redis.h -- a connection to a Redis server: connect, batched writes, replies decoded as they come. */
#ifndef MOONFORK_NET_REDIS_H
#define MOONFORK_NET_REDIS_H

#include <uv.h>

#include "redis_resp.h"

typedef struct net_redis_s net_redis_t;

/* What a connection tells its owner; none of them runs after net_redis_close. on_data gets the bytes
 * read (already fed to the connection's reader: take the replies with redis_resp_next), or n < 0:
 * UV_EOF (the server closed) or another UV_E* code. on_error: a write failed (a UV_E* code). */
typedef struct {
  void (*on_connect)(net_redis_t *c, int status);
  void (*on_data)(net_redis_t *c, ssize_t n);
  void (*on_error)(net_redis_t *c, int status);
} net_redis_callbacks_t;

/* The worker's loop and callbacks, once, before any other call. */
void net_redis_init(uv_loop_t *loop, const net_redis_callbacks_t *cb);
/* A new connection (TCP, or Unix-domain when is_unix), not connected; NULL when out of memory. The
 * caller owns it until net_redis_close, which frees it once libuv lets go. */
net_redis_t *net_redis_new(int is_unix);
/* Starts connecting; on_connect follows, then reading starts by itself. 0 or a negative UV_E* code. */
int net_redis_connect(net_redis_t *c, const struct sockaddr *addr);
int net_redis_connect_unix(net_redis_t *c, const char *path);
/* Queues the bytes of formatted commands (copied). Queued commands go out together just before the
 * loop next waits for I/O, so the commands of many coroutines share one write. 0, or UV_ENOMEM. */
int net_redis_send(net_redis_t *c, const char *data, size_t len);
/* The connection's reply reader (valid until the close). */
redis_resp_t *net_redis_reader(net_redis_t *c);
/* Closes the connection: no callback runs after this; the memory goes in libuv's close callbacks.
 * L releases the reader's registry slot (NULL when the Lua state is gone). */
void net_redis_close(net_redis_t *c, lua_State *L);
/* The owner's slot (a binding's registry ref). */
int *net_redis_user_ref(net_redis_t *c);
/* 1 while the connection is open (not closed by its owner). */
int net_redis_open(net_redis_t *c);

#endif
