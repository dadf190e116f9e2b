/* bind_obj.c -- the binding kit: how every C object is seen from Lua (see bind_obj.h).
 *
 * One kit instead of one way per binding: bind_core.c (timers), bind_http.c (connections) and
 * bind_mesh.c (streams) create, check, invalidate and call back through it, so the next bindings
 * (sockets, Redis, WebSockets) start from the same shape. The check compares metatables by identity:
 * luaL_checkudata would look the name up in the registry on every call, and send is on every request. */
#include "bind_obj.h"

#include <uv.h>

#include "luastate.h"
#include "util.h"

_Static_assert(MF_NO_REF == LUA_NOREF, "a C object's empty binding slot must read as LUA_NOREF");

void bind_type_init(lua_State *L, bind_type_t *type, const char *name) {
  type->name = name;
  lua_newtable(L);
  type->mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

bind_obj_t *bind_obj_new(lua_State *L, const bind_type_t *type, void *ptr) {
  bind_obj_t *obj = lua_newuserdata(L, sizeof *obj);
  obj->ptr = ptr;
  obj->obj_ref = LUA_NOREF;
  lua_rawgeti(L, LUA_REGISTRYINDEX, type->mt_ref);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  obj->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return obj;
}

bind_obj_t *bind_obj_check(lua_State *L, int idx, const bind_type_t *type) {
  bind_obj_t *obj = lua_touserdata(L, idx);
  if (obj != NULL && lua_getmetatable(L, idx)) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, type->mt_ref);
    int ours = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (ours) return obj;
  }
  luaL_typerror(L, idx, type->name);
  return NULL;
}

void bind_obj_push(lua_State *L, const bind_obj_t *obj) { lua_rawgeti(L, LUA_REGISTRYINDEX, obj->self_ref); }

void bind_obj_set_target(lua_State *L, bind_obj_t *obj, int idx) {
  if (obj->obj_ref == LUA_NOREF) {
    lua_pushvalue(L, idx);
    obj->obj_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return;
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, LUA_REGISTRYINDEX, obj->obj_ref); /* the slot is reused: no registry churn per request */
}

void bind_obj_push_target(lua_State *L, const bind_obj_t *obj) {
  if (obj->obj_ref == LUA_NOREF)
    lua_pushnil(L);
  else
    lua_rawgeti(L, LUA_REGISTRYINDEX, obj->obj_ref);
}

void bind_obj_invalidate(lua_State *L, bind_obj_t *obj) {
  obj->ptr = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, obj->obj_ref);
  obj->obj_ref = LUA_NOREF;
  int self = obj->self_ref;
  obj->self_ref = LUA_NOREF;
  luaL_unref(L, LUA_REGISTRYINDEX, self);
}

bind_obj_t *bind_obj_at(lua_State *L, int self_ref) {
  if (self_ref == LUA_NOREF) return NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, self_ref);
  bind_obj_t *obj = lua_touserdata(L, -1);
  lua_pop(L, 1); /* still pinned by self_ref */
  return obj;
}

void bind_obj_closed(lua_State *L, int *slot, int cb_ref, int call, const char *what) {
  bind_obj_t *obj = bind_obj_at(L, *slot);
  *slot = LUA_NOREF;
  if (obj == NULL) return;
  bind_obj_push(L, obj); /* on the stack: not collected before we are done */
  int has_target = obj->obj_ref != LUA_NOREF;
  bind_obj_push_target(L, obj);
  bind_obj_invalidate(L, obj);
  if (call && has_target)
    bind_call(L, cb_ref, 1, what);
  else
    lua_pop(L, 1);
  lua_pop(L, 1);
}

int bind_push_call(lua_State *L, int cb_ref, const bind_obj_t *obj) {
  if (cb_ref == LUA_NOREF || obj == NULL || obj->obj_ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, cb_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, obj->obj_ref);
  return 1;
}

void bind_call(lua_State *L, int cb_ref, int nargs, const char *what) {
  if (cb_ref == LUA_NOREF) {
    lua_pop(L, nargs);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, cb_ref);
  lua_insert(L, -nargs - 1);
  luastate_pcall(L, nargs, 0, what);
}

int bind_push_closed(lua_State *L, const bind_type_t *type) {
  lua_pushnil(L);
  lua_pushfstring(L, "ECLOSED: the %s is closed", type->name);
  return 2;
}

int bind_push_uv_error(lua_State *L, int r) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", uv_err_name(r), uv_strerror(r));
  return 2;
}

void bind_callbacks_set(lua_State *L, int idx, const char *const names[], int refs[], int n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  for (int i = 0; i < n; i++) {
    lua_getfield(L, idx, names[i]);
    if (!lua_isfunction(L, -1)) luaL_error(L, "callback '%s' must be a function", names[i]);
    luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
    refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
}

void bind_module_open(lua_State *L, const char *name, const luaL_Reg *fns) {
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, name);
  lua_remove(L, -2);
}
