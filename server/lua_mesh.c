/* lua_mesh.c -- the mesh as Lua sees it: peer streams as userdata, messages and events into Lua.
 *
 * A stream userdata holds a pointer to its mesh_peer_t, cleared when the stream closes (luv's pattern),
 * and is pinned in the registry while the stream is open. lua/moonfork/mesh.lua wraps it in the
 * stream object scripts use; the four handlers it registers receive every event. */
#include "lua_mesh.h"

#include <lauxlib.h>

#include "lua_env.h"

#define STREAM_MT "moonfork.stream"

typedef struct {
  mesh_peer_t *p;
} lstream_t;

static int h_peer = LUA_NOREF, h_data = LUA_NOREF, h_drain = LUA_NOREF, h_close = LUA_NOREF,
           h_leader = LUA_NOREF;

/* core.mesh_handlers(on_peer, on_data, on_drain, on_close, on_leader) */
static int core_mesh_handlers(lua_State *L) {
  int *refs[] = {&h_peer, &h_data, &h_drain, &h_close, &h_leader};
  for (int i = 0; i < 5; i++) {
    luaL_checktype(L, i + 1, LUA_TFUNCTION);
    luaL_unref(L, LUA_REGISTRYINDEX, *refs[i]);
    lua_pushvalue(L, i + 1);
    *refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* core.mesh_write(stream, msg) -> true | false (slow down) | nil, err */
static int core_mesh_write(lua_State *L) {
  lstream_t *u = luaL_checkudata(L, 1, STREAM_MT);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  int r = u->p ? mesh_peer_write(u->p, msg, len) : UV_EPIPE;
  if (r >= 0) {
    lua_pushboolean(L, r);
    return 1;
  }
  lua_pushnil(L);
  if (r == UV_EMSGSIZE)
    lua_pushfstring(L, "EMSGSIZE: a message of %d bytes is over the %d MiB limit", (int)len,
                    (int)(MESH_MAX_MESSAGE >> 20));
  else
    lua_pushliteral(L, "ECLOSED: the stream is closed");
  return 2;
}

static int core_mesh_close(lua_State *L) {
  lstream_t *u = luaL_checkudata(L, 1, STREAM_MT);
  if (u->p) mesh_peer_close(u->p);
  return 0;
}

void lua_mesh_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"mesh_handlers", core_mesh_handlers}, {"mesh_write", core_mesh_write}, {"mesh_close", core_mesh_close},
      {NULL, NULL}};
  luaL_newmetatable(L, STREAM_MT);
  lua_pop(L, 1);
  luaL_register(L, NULL, fns);
}

static int push_handler(lua_State *L, int ref, mesh_peer_t *p) {
  if (ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, *mesh_peer_user_ref(p));
  return 1;
}

static void on_peer(void *data, mesh_peer_t *p) {
  lua_State *L = data;
  lstream_t *u = lua_newuserdata(L, sizeof *u);
  u->p = p;
  luaL_getmetatable(L, STREAM_MT);
  lua_setmetatable(L, -2);
  *mesh_peer_user_ref(p) = luaL_ref(L, LUA_REGISTRYINDEX);
  if (!push_handler(L, h_peer, p)) return;
  lua_pushinteger(L, mesh_peer_id(p));
  lua_pushnumber(L, (lua_Number)mesh_peer_serial(p));
  mf_lua_pcall(L, 3, 0, "error in mesh 'node' handler");
}

static void on_message(void *data, mesh_peer_t *p, const char *msg, size_t len) {
  lua_State *L = data;
  if (!push_handler(L, h_data, p)) return;
  lua_pushlstring(L, msg, len);
  mf_lua_pcall(L, 2, 0, "error in mesh 'data' handler");
}

static void on_drain(void *data, mesh_peer_t *p) {
  lua_State *L = data;
  if (!push_handler(L, h_drain, p)) return;
  mf_lua_pcall(L, 1, 0, "error in mesh 'drain' handler");
}

static void on_closed(void *data, mesh_peer_t *p) {
  lua_State *L = data;
  int *ref = mesh_peer_user_ref(p);
  lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
  lstream_t *u = lua_touserdata(L, -1);
  if (u) u->p = NULL;
  lua_pop(L, 1);
  if (push_handler(L, h_close, p)) mf_lua_pcall(L, 1, 0, "error in mesh 'close' handler");
  luaL_unref(L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}

void lua_mesh_leader(lua_State *L, int id, long serial, long epoch) {
  if (h_leader == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h_leader);
  lua_pushinteger(L, id);
  lua_pushnumber(L, (lua_Number)serial);
  lua_pushnumber(L, (lua_Number)epoch);
  mf_lua_pcall(L, 3, 0, "error in mesh 'leader' handler");
}

const mesh_callbacks_t lua_mesh_callbacks = {on_peer, on_message, on_drain, on_closed};
