/* bind_mesh.h -- the mesh as Lua sees it: `moonfork.core.mesh`, peer streams as binding objects. */
#ifndef MOONFORK_BIND_MESH_H
#define MOONFORK_BIND_MESH_H

#include <lua.h>

#include "mesh.h"

/* Opens package.loaded["moonfork.core.mesh"] (on, write, close). */
void bind_mesh_open(lua_State *L);
/* The mesh_callbacks_t for mesh_init; their `data` is the lua_State. */
extern const mesh_callbacks_t bind_mesh_callbacks;
/* The master named worker `id` the leader (see master.c). */
void bind_mesh_leader(lua_State *L, int id, long serial, long epoch);

#endif
