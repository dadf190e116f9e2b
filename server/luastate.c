/* luastate.c -- creating a Lua state for a script: module paths, the core module slot, error tracebacks.
 *
 * moonfork's own Lua modules are found, in order, in: $MOONFORK_LUA_DIR; <exe>/../share/moonfork/lua
 * (an installed tree); <exe>/../lua (the binary in build/ of a checkout); the directory configured at
 * build time. The script's own directory comes first on package.path so apps can keep their modules
 * beside them. */
#include "luastate.h"

#include <lauxlib.h>
#include <libgen.h>
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"

#ifndef MOONFORK_LUA_DIR_DEFAULT
#define MOONFORK_LUA_DIR_DEFAULT "/usr/local/share/moonfork/lua"
#endif

static int has_init(const char *dir) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/moonfork/init.lua", dir);
  return access(path, R_OK) == 0;
}

const char *luastate_dir(void) {
  static char dir[PATH_MAX];
  if (dir[0]) return dir;
  const char *env = getenv("MOONFORK_LUA_DIR");
  if (env && *env) {
    snprintf(dir, sizeof dir, "%s", env);
    return dir;
  }
  char exe[PATH_MAX];
  size_t size = sizeof exe;
  if (uv_exepath(exe, &size) == 0) {
    char *d = dirname(exe);
    const char *rel[] = {"../share/moonfork/lua", "../lua"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
      char cand[PATH_MAX];
      snprintf(cand, sizeof cand, "%s/%s", d, rel[i]);
      if (has_init(cand)) {
        if (realpath(cand, dir) == NULL) snprintf(dir, sizeof dir, "%s", cand);
        return dir;
      }
    }
  }
  snprintf(dir, sizeof dir, "%s", MOONFORK_LUA_DIR_DEFAULT);
  return dir;
}

/* luastate_traceback as a value in the registry of the live state: made once per state, since pushing
 * a C function allocates a closure. A process has one state at a time (the master closes each probe's). */
static int traceback_ref = LUA_NOREF;

lua_State *luastate_new(const char *script, const char *role) {
  traceback_ref = LUA_NOREF;
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  luaL_openlibs(L);
  char sdir[PATH_MAX];
  snprintf(sdir, sizeof sdir, "%s", script);
  const char *scriptdir = dirname(sdir);
  const char *ldir = luastate_dir();
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s", scriptdir, scriptdir, ldir, ldir,
                  lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "loaded");
  lua_newtable(L);
  lua_pushstring(L, role);
  lua_setfield(L, -2, "role");
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "moonfork.core");
  lua_replace(L, -3); /* leave only the core table */
  lua_pop(L, 1);
  return L;
}

int luastate_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int luastate_pcall(lua_State *L, int nargs, int nresults, const char *what) {
  int base = lua_gettop(L) - nargs;
  if (traceback_ref == LUA_NOREF) {
    lua_pushcfunction(L, luastate_traceback);
    traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
  lua_insert(L, base);
  int r = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (r != 0) {
    const char *msg = lua_tostring(L, -1);
    char *line = NULL;
    size_t len = strlen(what) + strlen(msg ? msg : "?") + 3;
    line = malloc(len);
    if (line) {
      snprintf(line, len, "%s: %s", what, msg ? msg : "?");
      mf_log_block(line);
      free(line);
    }
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

int luastate_require(lua_State *L, const char *name) {
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  return luastate_pcall(L, 1, 0, "error loading a moonfork module");
}
