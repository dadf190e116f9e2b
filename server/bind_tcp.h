/* bind_tcp.h -- outbound sockets as Lua sees them: `moonfork.core.tcp`. */
#ifndef MOONFORK_BIND_TCP_H
#define MOONFORK_BIND_TCP_H

#include <lua.h>
#include <uv.h>

#include "config.h"

/* Opens package.loaded["moonfork.core.tcp"] (with cfg's resolver TTL) and sets up net_tcp on `loop`. */
void bind_tcp_open(lua_State *L, uv_loop_t *loop, const mf_config_t *cfg);
/* The worker drains or exits ("drain", "exit"): lua/moonfork/socket.lua closes its pools. */
void bind_tcp_emit(lua_State *L, const char *event);

#endif
