/* bind_pass.h -- moonfork.http.pass's C half as Lua sees it: `moonfork.core.pass`. */
#ifndef MOONFORK_BIND_PASS_H
#define MOONFORK_BIND_PASS_H

#include <lua.h>
#include <uv.h>

/* Opens package.loaded["moonfork.core.pass"] (lua/moonfork/http_pass.lua is its Lua half). */
void bind_pass_open(lua_State *L, uv_loop_t *loop);

#endif
