/* bind_obj.h -- the binding kit: how every C object is seen from Lua (timers, connections, streams).
 *
 * A binding object is a userdata holding a pointer to C memory. While the C object is open the
 * userdata is pinned in the registry (self_ref), so the C side can push it and scripts may drop it;
 * when the C side closes, bind_obj_invalidate NULLs the pointer and unpins it, and a later method
 * call answers nil, "ECLOSED: the <type> is closed". Each object also holds a ref to the Lua object the C side calls with
 * (the response, the stream, a timer's job), so the Lua halves need no map from userdata to object.
 * Every ref is a registry ref; "no ref" is LUA_NOREF, and nothing else. */
#ifndef MOONFORK_BIND_OBJ_H
#define MOONFORK_BIND_OBJ_H

#include <lauxlib.h>
#include <lua.h>

typedef struct {
  const char *name; /* for error messages ("connection", "timer", "stream") */
  int mt_ref;       /* the type's metatable in the registry, compared by identity */
} bind_type_t;

typedef struct {
  void *ptr;    /* the C object, NULL once it is closed */
  int self_ref; /* pins the userdata while the C object is open */
  int obj_ref;  /* the Lua object the C side calls with, or LUA_NOREF */
} bind_obj_t;

/* Makes the type's metatable (empty: the Lua halves wrap the userdata). */
void bind_type_init(lua_State *L, bind_type_t *type, const char *name);
/* Pushes a new userdata of `type` holding `ptr`, pinned (self_ref set); returns it. */
bind_obj_t *bind_obj_new(lua_State *L, const bind_type_t *type, void *ptr);
/* The object at idx if it is of `type` (its ptr may be NULL: closed), else raises an argument error. */
bind_obj_t *bind_obj_check(lua_State *L, int idx, const bind_type_t *type);
/* Pushes the userdata of an open (pinned) object. */
void bind_obj_push(lua_State *L, const bind_obj_t *obj);
/* Sets the Lua object the C side calls with to the value at idx (one registry slot per object, reused). */
void bind_obj_set_target(lua_State *L, bind_obj_t *obj, int idx);
/* Pushes that Lua object (nil when none was set). */
void bind_obj_push_target(lua_State *L, const bind_obj_t *obj);
/* The C object is gone: NULLs the pointer, drops the target and unpins the userdata (which may be
 * collected from here on, unless it is on the stack). */
void bind_obj_invalidate(lua_State *L, bind_obj_t *obj);

/* The object pinned under the registry ref `self_ref` (a C object's slot), NULL for LUA_NOREF. */
bind_obj_t *bind_obj_at(lua_State *L, int self_ref);
/* The C object behind *slot is gone: invalidates its binding object and sets *slot to LUA_NOREF;
 * then, if `call` and the object had a target, calls cb(target) (see bind_call). */
void bind_obj_closed(lua_State *L, int *slot, int cb_ref, int call, const char *what);
/* Pushes the callback cb_ref and the object's target; 0 (nothing pushed) when either is missing. */
int bind_push_call(lua_State *L, int cb_ref, const bind_obj_t *obj);
/* Calls the callback cb_ref with the nargs values on the stack top (popped), under luastate_pcall
 * (errors logged as "`what`: ..."); with cb_ref LUA_NOREF they are only popped. */
void bind_call(lua_State *L, int cb_ref, int nargs, const char *what);

/* Pushes nil, "ECLOSED: the <type> is closed"; returns 2 (a call on an object whose C side closed). */
int bind_push_closed(lua_State *L, const bind_type_t *type);
/* Pushes nil, "ENAME: message" for the libuv error r; returns 2. */
int bind_push_uv_error(lua_State *L, int r);

/* Registers a binding's Lua half: the table at idx maps each of names[0..n) to a function, stored in
 * refs[i] (an earlier one is released). A missing or non-function entry raises at the caller's level. */
void bind_callbacks_set(lua_State *L, int idx, const char *const names[], int refs[], int n);
/* Opens package.loaded[name] as a new table with `fns`, left on the stack top. */
void bind_module_open(lua_State *L, const char *name, const luaL_Reg *fns);

#endif
