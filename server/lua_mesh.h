/* lua_mesh.h -- the mesh as Lua sees it: peer streams as userdata, messages and events into Lua. */
#ifndef MOONFORK_LUA_MESH_H
#define MOONFORK_LUA_MESH_H

#include <lua.h>

#include "mesh.h"

/* Adds core.mesh_handlers, core.mesh_write and core.mesh_close to the core table on the stack top. */
void lua_mesh_open(lua_State *L);
/* The mesh_callbacks_t for mesh_init; their `data` is the lua_State. */
extern const mesh_callbacks_t lua_mesh_callbacks;
/* The master named worker `id` the leader (see master.c). */
void lua_mesh_leader(lua_State *L, int id, long serial, long epoch);

#endif
