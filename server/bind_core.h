/* bind_core.h -- the worker's core modules: `moonfork.core` and `moonfork.core.timer`. */
#ifndef MOONFORK_BIND_CORE_H
#define MOONFORK_BIND_CORE_H

#include <lua.h>
#include <uv.h>

#include "config.h"

/* Adds the worker's functions to the core table on the stack top (left there), and opens
 * package.loaded["moonfork.core.timer"]. */
void bind_core_open(lua_State *L, uv_loop_t *loop, const mf_config_t *cfg);
/* Tells the script's moonfork.on(name) listeners ("drain", "exit"; errors are logged). */
void bind_core_emit(lua_State *L, const char *name);

#endif
