/* lua_core.h -- the worker's `moonfork.core` module: timers, logging, process facts. */
#ifndef MOONFORK_LUA_CORE_H
#define MOONFORK_LUA_CORE_H

#include <lua.h>
#include <uv.h>

#include "config.h"

/* Adds the worker's functions to the core table on the stack top (left there). */
void lua_core_open(lua_State *L, uv_loop_t *loop, const mf_config_t *cfg);
/* Tells the script's moonfork.on(name) listeners (errors are logged). */
void lua_core_emit(lua_State *L, const char *name);

#endif
