/* test_bind_obj.c -- unit tests for server/bind_obj.c, the binding kit, on a bare Lua state: no loop. */
#include <lauxlib.h>
#include <lualib.h>
#include <uv.h>

#include "../server/bind_obj.h"
#include "test.h"

static int calls;

static int count_call(lua_State *L) {
  calls++;
  lua_pushvalue(L, 1);
  lua_setglobal(L, "last_arg");
  return 0;
}

/* check(ud) from Lua: the kit's check as a method sees it */
static bind_type_t thing_type, other_type;
static int thing_ptr(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &thing_type);
  if (obj->ptr == NULL) return bind_push_closed(L, &thing_type);
  lua_pushboolean(L, 1);
  return 1;
}

static void test_lifecycle(lua_State *L) {
  int thing = 42;
  int top = lua_gettop(L);
  bind_obj_t *obj = bind_obj_new(L, &thing_type, &thing);
  CHECK(obj->ptr == &thing && obj->self_ref > 0 && obj->obj_ref == LUA_NOREF);
  CHECK(bind_obj_check(L, -1, &thing_type) == obj);
  lua_pop(L, 1);
  CHECK(lua_gettop(L) == top);
  /* pinned: reachable through its self_ref after the stack let go of it */
  lua_gc(L, LUA_GCCOLLECT, 0);
  CHECK(bind_obj_at(L, obj->self_ref) == obj);
  CHECK(bind_obj_at(L, LUA_NOREF) == NULL);

  /* the target: one registry slot, reused */
  lua_pushliteral(L, "first");
  bind_obj_set_target(L, obj, -1);
  int slot = obj->obj_ref;
  lua_pushliteral(L, "second");
  bind_obj_set_target(L, obj, -1);
  lua_pop(L, 2);
  CHECK(obj->obj_ref == slot);
  bind_obj_push_target(L, obj);
  CHECK_STR(lua_tostring(L, -1), "second");
  lua_pop(L, 1);

  /* a call with the target, then the close: the callback gets the target once */
  lua_pushcfunction(L, count_call);
  int cb = luaL_ref(L, LUA_REGISTRYINDEX);
  calls = 0;
  CHECK(bind_push_call(L, cb, obj) == 1);
  lua_pcall(L, 1, 0, 0);
  CHECK(calls == 1);
  bind_obj_push(L, obj); /* a script still holds it */
  int self = obj->self_ref;
  bind_obj_closed(L, &self, cb, 1, "test");
  CHECK(calls == 2 && self == LUA_NOREF);
  lua_getglobal(L, "last_arg");
  CHECK_STR(lua_tostring(L, -1), "second");
  lua_pop(L, 1);
  CHECK(obj->ptr == NULL && obj->self_ref == LUA_NOREF && obj->obj_ref == LUA_NOREF);
  CHECK(bind_push_call(L, cb, obj) == 0);

  /* a method on it now: nil, "ECLOSED: ..." */
  lua_pushcfunction(L, thing_ptr);
  lua_insert(L, -2);
  CHECK(lua_pcall(L, 1, 2, 0) == 0);
  CHECK(lua_isnil(L, -2));
  CHECK_STR(lua_tostring(L, -1), "ECLOSED: the thing is closed");
  lua_settop(L, top);
  bind_obj_closed(L, &self, cb, 1, "test"); /* twice: nothing */
  CHECK(calls == 2);
  luaL_unref(L, LUA_REGISTRYINDEX, cb);
}

static void test_check_rejects(lua_State *L) {
  int thing = 1;
  bind_obj_new(L, &other_type, &thing);
  lua_pushcfunction(L, thing_ptr);
  lua_insert(L, -2);
  CHECK(lua_pcall(L, 1, 1, 0) != 0); /* another type's object */
  CHECK(strstr(lua_tostring(L, -1), "thing expected") != NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, thing_ptr);
  lua_newuserdata(L, sizeof(bind_obj_t)); /* a userdata without our metatable */
  CHECK(lua_pcall(L, 1, 1, 0) != 0);
  lua_pop(L, 1);
}

static int set_callbacks(lua_State *L) {
  static const char *const names[] = {"a", "b"};
  static int refs[] = {LUA_NOREF, LUA_NOREF};
  bind_callbacks_set(L, 1, names, refs, 2);
  lua_pushboolean(L, refs[0] > 0 && refs[1] > 0);
  return 1;
}

static void test_callbacks_and_errors(lua_State *L) {
  lua_pushcfunction(L, set_callbacks);
  lua_setglobal(L, "set_callbacks");
  CHECK(luaL_dostring(L, "return set_callbacks { a = print, b = print }") == 0 && lua_toboolean(L, -1));
  lua_settop(L, 0);
  CHECK(luaL_dostring(L, "set_callbacks { a = print }") != 0);
  CHECK(strstr(lua_tostring(L, -1), "callback 'b' must be a function") != NULL);
  lua_settop(L, 0);
  CHECK(bind_push_uv_error(L, UV_ENOENT) == 2);
  CHECK(lua_isnil(L, -2));
  CHECK(strncmp(lua_tostring(L, -1), "ENOENT: ", 8) == 0);
  lua_settop(L, 0);
  static const luaL_Reg fns[] = {{"set", set_callbacks}, {NULL, NULL}};
  bind_module_open(L, "test.mod", fns);
  lua_pop(L, 1);
  CHECK(luaL_dostring(L, "return require('test.mod').set ~= nil") == 0 && lua_toboolean(L, -1));
  lua_settop(L, 0);
}

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  bind_type_init(L, &thing_type, "thing");
  bind_type_init(L, &other_type, "other");
  test_lifecycle(L);
  test_check_rejects(L);
  test_callbacks_and_errors(L);
  lua_close(L);
  TEST_DONE();
}
