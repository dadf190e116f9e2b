/* luastate.h -- creating a Lua state for a script: module paths, the core module slot, error tracebacks. */
#ifndef MOONFORK_LUASTATE_H
#define MOONFORK_LUASTATE_H

#include <lua.h>

/* A new state with the standard libraries, package.path set to the script's directory and moonfork's
 * Lua modules, and package.loaded["moonfork.core"] = an empty table with role = `role`, which is left on
 * the stack top. NULL when out of memory. */
lua_State *luastate_new(const char *script, const char *role);

/* Message handler for lua_pcall: the error with a stack traceback. */
int luastate_traceback(lua_State *L);

/* lua_pcall with luastate_traceback; on error logs "`what`: error+traceback", pops it and returns -1. */
int luastate_pcall(lua_State *L, int nargs, int nresults, const char *what);

/* require(name) under luastate_pcall (an error is logged): 0, or -1. */
int luastate_require(lua_State *L, const char *name);

/* The directory holding moonfork/init.lua (see the search order in luastate.c). */
const char *luastate_dir(void);

#endif
