/* script.c -- loading the user's script: the master's probe for listen() options, the worker's full run.
 *
 * The master must learn the port and worker count the script asks for, yet never run request code.
 * It loads the script in a state whose core table says role = "master": there moonfork.listen()
 * hands its options to core.probe_listen, which records them and unwinds the script with a sentinel
 * error. Nothing after listen() runs in the master, and the state is closed at once. A script that
 * spins before listen() is stopped by an instruction-count hook after MF_PROBE_SECONDS. */
#include "script.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "luastate.h"

#define MF_PROBE_SECONDS 30

static char probe_sentinel;
static mf_config_t *probe_cfg;
static char probe_err[512];
static time_t probe_deadline;

/* listen({shared = {name = size, ...}}): the shared dicts (config.c checks names and sizes). */
static int probe_shared(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE)
    return luaL_error(L, "listen(): option shared must be a table of name = size, e.g. { sessions = \"10m\" }");
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int kt = lua_type(L, -2), vt = lua_type(L, -1);
    if (kt != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
      return luaL_error(L, "listen(): shared: each entry must be name = size (a string or a number of bytes)");
    lua_pushvalue(L, -1);
    char why[512];
    int r = mf_config_add_shared(probe_cfg, lua_tostring(L, -3), lua_tostring(L, -1), why, sizeof why);
    if (r != 0) return luaL_error(L, "%s", why);
    lua_pop(L, 2);
  }
  return 0;
}

/* core.probe_listen(opts): records listen()'s options, then stops the script. */
static int core_probe_listen(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "listen(): option names must be strings");
      const char *key = lua_tostring(L, -2);
      const char *val = NULL;
      if (strcmp(key, "shared") == 0) {
        probe_shared(L, lua_gettop(L));
        lua_pop(L, 1);
        continue;
      }
      if (lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TSTRING) {
        lua_pushvalue(L, -1);
        val = lua_tostring(L, -1);
        lua_pop(L, 1);
      } else if (lua_type(L, -1) == LUA_TBOOLEAN) {
        val = lua_toboolean(L, -1) ? "true" : "false";
      } else if (lua_type(L, -1) != LUA_TTABLE && lua_type(L, -1) != LUA_TFUNCTION) {
        return luaL_error(L, "listen(): option %s must be a number, a string or a boolean", key);
      }
      if (val != NULL) {
        char why[512];
        int r = mf_config_set_from_script(probe_cfg, key, val, why, sizeof why);
        if (r < 0) return luaL_error(L, "%s", why);
        if (r > 0) mf_log("warning: listen(): unknown option '%s' ignored", key);
      }
      lua_pop(L, 1);
    }
  }
  lua_pushlightuserdata(L, &probe_sentinel);
  return lua_error(L);
}

static void probe_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (time(NULL) > probe_deadline)
    luaL_error(L, "the script ran for more than %d s without calling moonfork.listen()", MF_PROBE_SECONDS);
}

/* The first line of a Lua error message (drop a traceback). */
static void first_line(const char *msg, char *out, size_t outlen) {
  snprintf(out, outlen, "%s", msg ? msg : "unknown error");
  char *nl = strchr(out, '\n');
  if (nl) *nl = '\0';
}

int mf_script_probe(mf_config_t *cfg, char *err, size_t errlen) {
  FILE *f = fopen(cfg->script, "r");
  if (f == NULL) {
    snprintf(err, errlen, "cannot open script '%s': %s", cfg->script, strerror(errno));
    return -1;
  }
  fclose(f);
  lua_State *L = luastate_new(cfg->script, "master");
  if (L == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  lua_pushcfunction(L, core_probe_listen);
  lua_setfield(L, -2, "probe_listen");
  lua_pop(L, 1);
  probe_cfg = cfg;
  probe_err[0] = '\0';
  int rc = -1;
  if (luaL_loadfile(L, cfg->script) != 0) {
    first_line(lua_tostring(L, -1), err, errlen);
    goto done;
  }
  probe_deadline = time(NULL) + MF_PROBE_SECONDS;
  lua_sethook(L, probe_hook, LUA_MASKCOUNT, 100000);
  int r = lua_pcall(L, 0, 0, 0);
  if (r == 0) {
    snprintf(err, errlen, "%s: the script never called moonfork.listen()", cfg->script);
  } else if (lua_touserdata(L, -1) == &probe_sentinel) {
    rc = 0;
  } else {
    char line[1024];
    first_line(lua_tostring(L, -1), line, sizeof line);
    snprintf(err, errlen, "error loading %s: %s", cfg->script, line);
  }
done:
  lua_close(L);
  return rc;
}

int mf_script_run(lua_State *L, const char *script, char *err, size_t errlen) {
  if (luaL_loadfile(L, script) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  int base = lua_gettop(L);
  lua_pushcfunction(L, luastate_traceback);
  lua_insert(L, base);
  int r = lua_pcall(L, 0, 0, base);
  lua_remove(L, base);
  if (r != 0) {
    snprintf(err, errlen, "error loading %s: %s", script, lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}
