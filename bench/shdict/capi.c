/* bench/shdict/capi.c -- the classic Lua C API binding of shdict_get/shdict_store/shdict_incr, built
 * only for bench/shdict/ffi-vs-capi: the same store called the way lua_CFunctions are (arguments
 * checked off the Lua stack, results pushed), to measure what lua/moonfork/shared.lua's FFI calls
 * save. Not part of the server. */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "shdict.h"

static char capi_buf[65536];

static shdict_t *check_dict(lua_State *L) { return (shdict_t *)lua_touserdata(L, 1); }

static int capi_get(lua_State *L) {
  shdict_t *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  shdict_val_t v;
  int r = shdict_get(d, key, klen, 0, &v, capi_buf, sizeof capi_buf);
  if (r != 0) {
    lua_pushnil(L);
    return 1;
  }
  if (v.type == SHD_TSTRING) lua_pushlstring(L, capi_buf, v.len);
  else if (v.type == SHD_TNUMBER) lua_pushnumber(L, v.num);
  else lua_pushboolean(L, v.num != 0);
  return 1;
}

static int capi_set(lua_State *L) {
  shdict_t *d = check_dict(L);
  size_t klen, slen = 0;
  const char *key = luaL_checklstring(L, 2, &klen), *str = NULL;
  shdict_val_t v = {0};
  if (lua_type(L, 3) == LUA_TSTRING) {
    str = lua_tolstring(L, 3, &slen);
    v.type = SHD_TSTRING, v.len = slen;
  } else {
    v.type = SHD_TNUMBER, v.num = luaL_checknumber(L, 3);
  }
  int forcible = 0, r = shdict_store(d, SHD_SET, key, klen, &v, str, 0, &forcible);
  lua_pushboolean(L, r == 0);
  return 1;
}

static int capi_incr(lua_State *L) {
  shdict_t *d = check_dict(L);
  size_t klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  double out = 0;
  int forcible = 0;
  shdict_incr(d, key, klen, luaL_checknumber(L, 3), 1, 0, 0, &out, &forcible);
  lua_pushnumber(L, out);
  return 1;
}

/* A 1 MB dict in anonymous memory, as a light userdata (also usable from the FFI). */
static int capi_new(lua_State *L) {
  size_t size = 1 << 20;
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED || shdict_init(p, size) != 0) return luaL_error(L, "no memory");
  lua_pushlightuserdata(L, shdict_open(p, size));
  return 1;
}

int luaopen_shdict_capi(lua_State *L) {
  static const luaL_Reg fns[] = {{"new", capi_new}, {"get", capi_get}, {"set", capi_set}, {"incr", capi_incr}, {NULL, NULL}};
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}
