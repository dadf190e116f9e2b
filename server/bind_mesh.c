/* bind_mesh.c -- the mesh as Lua sees it: `moonfork.core.mesh`, peer streams as binding objects.
 *
 * A stream is a binding object (bind_obj.h) over its mesh_peer_t, pinned while the peer is open and
 * invalidated when it closes. Its target is the stream object lua/moonfork/mesh.lua made for it (the
 * `peer` callback returns it), and every later event is called with that object: no map in Lua. */
#include "bind_mesh.h"

#include <lauxlib.h>

#include "bind_obj.h"
#include "luastate.h"

static bind_type_t stream_type;

enum { CB_PEER, CB_DATA, CB_DRAIN, CB_CLOSE, CB_LEADER, CB_COUNT };
static const char *const mesh_names[CB_COUNT] = {"peer", "data", "drain", "close", "leader"};
static int mesh_refs[CB_COUNT] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};

/* mesh.on{ peer = fn(ud, id, serial) -> stream, data = fn(stream, msg), drain = fn(stream),
 *          close = fn(stream), leader = fn(id, serial, epoch) } */
static int mesh_on(lua_State *L) {
  bind_callbacks_set(L, 1, mesh_names, mesh_refs, CB_COUNT);
  return 0;
}

/* mesh.write(ud, msg) -> true | false (slow down) | nil, "ECLOSED: ..." | nil, "EMSGSIZE: ..." */
static int mesh_write(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &stream_type);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  if (obj->ptr == NULL) return bind_push_closed(L, &stream_type);
  int r = mesh_peer_write(obj->ptr, msg, len);
  if (r >= 0) {
    lua_pushboolean(L, r);
    return 1;
  }
  if (r != UV_EMSGSIZE) return bind_push_closed(L, &stream_type);
  lua_pushnil(L);
  lua_pushfstring(L, "EMSGSIZE: a message of %d bytes is over the %d MiB limit", (int)len,
                  (int)(MESH_MAX_MESSAGE >> 20));
  return 2;
}

/* mesh.close(ud): closing twice is fine. */
static int mesh_close(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &stream_type);
  if (obj->ptr) mesh_peer_close(obj->ptr);
  return 0;
}

void bind_mesh_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"on", mesh_on}, {"write", mesh_write}, {"close", mesh_close}, {NULL, NULL}};
  bind_type_init(L, &stream_type, "stream");
  bind_module_open(L, "moonfork.core.mesh", fns);
  lua_pop(L, 1);
}

static void on_peer(void *data, mesh_peer_t *p) {
  lua_State *L = data;
  bind_obj_t *obj = bind_obj_new(L, &stream_type, p);
  *mesh_peer_user_ref(p) = obj->self_ref;
  if (mesh_refs[CB_PEER] == LUA_NOREF) {
    lua_pop(L, 1);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, mesh_refs[CB_PEER]);
  lua_pushvalue(L, -2);
  lua_pushinteger(L, mesh_peer_id(p));
  lua_pushnumber(L, (lua_Number)mesh_peer_serial(p));
  if (luastate_pcall(L, 3, 1, "error in mesh 'node' handler") == 0) {
    if (obj->ptr) {
      bind_obj_set_target(L, obj, -1);
    } else { /* closed while Lua was making the stream: tell it now */
      lua_pushvalue(L, -1);
      bind_call(L, mesh_refs[CB_CLOSE], 1, "error in mesh 'close' handler");
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void on_message(void *data, mesh_peer_t *p, const char *msg, size_t len) {
  lua_State *L = data;
  if (!bind_push_call(L, mesh_refs[CB_DATA], bind_obj_at(L, *mesh_peer_user_ref(p)))) return;
  lua_pushlstring(L, msg, len);
  luastate_pcall(L, 2, 0, "error in mesh 'data' handler");
}

static void on_drain(void *data, mesh_peer_t *p) {
  lua_State *L = data;
  if (!bind_push_call(L, mesh_refs[CB_DRAIN], bind_obj_at(L, *mesh_peer_user_ref(p)))) return;
  luastate_pcall(L, 1, 0, "error in mesh 'drain' handler");
}

static void on_closed(void *data, mesh_peer_t *p) {
  bind_obj_closed(data, mesh_peer_user_ref(p), mesh_refs[CB_CLOSE], 1, "error in mesh 'close' handler");
}

void bind_mesh_leader(lua_State *L, int id, long serial, long epoch) {
  if (mesh_refs[CB_LEADER] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, mesh_refs[CB_LEADER]);
  lua_pushinteger(L, id);
  lua_pushnumber(L, (lua_Number)serial);
  lua_pushnumber(L, (lua_Number)epoch);
  luastate_pcall(L, 3, 0, "error in mesh 'leader' handler");
}

const mesh_callbacks_t bind_mesh_callbacks = {on_peer, on_message, on_drain, on_closed};
