/* bind_httpc.h -- the HTTP client's response parser as Lua sees it: `moonfork.core.httpc`. */
#ifndef MOONFORK_BIND_HTTPC_H
#define MOONFORK_BIND_HTTPC_H

#include <lua.h>

/* Opens package.loaded["moonfork.core.httpc"] (lua/moonfork/http_client.lua is its Lua half). */
void bind_httpc_open(lua_State *L);

#endif
