/* bind_ws.h -- WebSocket connections as Lua sees them: `moonfork.core.ws` (lua/moonfork/websocket.lua
 * is the Lua half). */
#ifndef MOONFORK_BIND_WS_H
#define MOONFORK_BIND_WS_H

#include <lua.h>
#include <uv.h>

/* Opens package.loaded["moonfork.core.ws"] and sets up ws_conn.c on `loop`. */
void bind_ws_open(lua_State *L, uv_loop_t *loop);

#endif
