/* bind_redis.h -- Redis connections as Lua sees them: `moonfork.core.redis`. */
#ifndef MOONFORK_BIND_REDIS_H
#define MOONFORK_BIND_REDIS_H

#include <lua.h>
#include <uv.h>

/* Opens package.loaded["moonfork.core.redis"] and sets up net_redis on `loop`. */
void bind_redis_open(lua_State *L, uv_loop_t *loop);
/* The worker drains or exits ("drain", "exit"): lua/moonfork/redis.lua closes its connections. */
void bind_redis_emit(lua_State *L, const char *event);

#endif
