/* bind_pg.h -- PostgreSQL connections as Lua sees them: `moonfork.core.pg`. */
#ifndef MOONFORK_BIND_PG_H
#define MOONFORK_BIND_PG_H

#include <lua.h>
#include <uv.h>

/* Opens package.loaded["moonfork.core.pg"] and sets up net_pg on `loop`. */
void bind_pg_open(lua_State *L, uv_loop_t *loop);

#endif
