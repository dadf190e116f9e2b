/* bind_redis.c -- Redis connections as Lua sees them: `moonfork.core.redis`, connections as binding objects.
 *
 * A connection is a binding object (bind_obj.h) over its net_redis_t; its target is the connection
 * table lua/moonfork/redis.lua made, and every event is called with it: connected(conn, err),
 * reply(conn, value, is_err) once per reply in the order they come, lost(conn, err) when the server
 * closed, a read or write failed, or a reply was malformed. The Lua half matches replies to waiters
 * (FIFO), times them out, reconnects and closes; C only moves bytes and builds values. */
#include "bind_redis.h"

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind_obj.h"
#include "log.h"
#include "luastate.h"
#include "net_redis.h"

static bind_type_t redis_type;
static lua_State *redis_L; /* the main thread */

enum { CB_CONNECTED, CB_REPLY, CB_LOST, CB_DRAIN, CB_EXIT, CB_COUNT };
static const char *const redis_names[CB_COUNT] = {"connected", "reply", "lost", "drain", "exit"};
static int redis_refs[CB_COUNT] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};

static int redis_fail(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

static net_redis_t *redis_arg(lua_State *L) { return bind_obj_check(L, 1, &redis_type)->ptr; }

/* redis.on{ connected = fn(conn, err), reply = fn(conn, value, is_err), lost = fn(conn, err),
 *           drain = fn(), exit = fn() } */
static int redis_on(lua_State *L) {
  bind_callbacks_set(L, 1, redis_names, redis_refs, CB_COUNT);
  return 0;
}

/* redis.new(target, is_unix) -> ud | nil, err */
static int redis_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  net_redis_t *c = net_redis_new(lua_toboolean(L, 2));
  if (c == NULL) return redis_fail(L, uv_strerror(UV_ENOMEM));
  bind_obj_t *obj = bind_obj_new(L, &redis_type, c);
  *net_redis_user_ref(c) = obj->self_ref;
  bind_obj_set_target(L, obj, 1);
  return 1;
}

/* redis.connect(ud, ip, port) or redis.connect(ud, path) -> true | nil, err; then connected(conn, err) */
static int redis_connect(lua_State *L) {
  net_redis_t *c = redis_arg(L);
  const char *where = luaL_checkstring(L, 2);
  if (c == NULL) return redis_fail(L, "closed");
  int r;
  if (lua_isnoneornil(L, 3)) {
    r = net_redis_connect_unix(c, where);
  } else {
    int port = (int)luaL_checkinteger(L, 3);
    struct sockaddr_storage addr;
    r = strchr(where, ':') ? uv_ip6_addr(where, port, (struct sockaddr_in6 *)&addr)
                           : uv_ip4_addr(where, port, (struct sockaddr_in *)&addr);
    if (r == 0) r = net_redis_connect(c, (struct sockaddr *)&addr);
  }
  if (r != 0) return redis_fail(L, uv_strerror(r));
  lua_pushboolean(L, 1);
  return 1;
}

/* redis.send(ud, name, args...) -> true | nil, err: the command is queued (see net_redis_send).
 * An argument that is neither a string nor a number raises. */
static int redis_send(lua_State *L) {
  net_redis_t *c = redis_arg(L);
  size_t len;
  char *cmd = redis_resp_format(L, 2, &len);
  if (c == NULL) {
    redisFreeCommand(cmd);
    return redis_fail(L, "closed");
  }
  int r = net_redis_send(c, cmd, len);
  redisFreeCommand(cmd);
  if (r != 0) return redis_fail(L, uv_strerror(r));
  lua_pushboolean(L, 1);
  return 1;
}

/* redis.close(ud): closing twice is fine. */
static int redis_close(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &redis_type);
  net_redis_t *c = obj->ptr;
  if (c == NULL) return 0;
  *net_redis_user_ref(c) = LUA_NOREF;
  bind_obj_invalidate(L, obj);
  net_redis_close(c, L);
  return 0;
}

/* Pushes the callback `cb` and the connection's target; 0 when there is no one to tell. */
static int redis_push_call(net_redis_t *c, int cb) {
  return bind_push_call(redis_L, redis_refs[cb], bind_obj_at(redis_L, *net_redis_user_ref(c)));
}

static void redis_lost(net_redis_t *c, const char *err) {
  if (!redis_push_call(c, CB_LOST)) return;
  lua_pushstring(redis_L, err);
  luastate_pcall(redis_L, 2, 0, "error in a redis connection's lost callback");
}

static void redis_on_connect(net_redis_t *c, int status) {
  if (!redis_push_call(c, CB_CONNECTED)) return;
  if (status == 0)
    lua_pushnil(redis_L);
  else
    lua_pushstring(redis_L, uv_strerror(status));
  luastate_pcall(redis_L, 2, 0, "error in a redis connection's connect callback");
}

/* Under lua_pcall: (reply callback, target, lightuserdata c) -> nil, or a protocol error message.
 * Calls reply(target, value, is_err) for each complete reply while the connection stays open. */
static int redis_deliver(lua_State *L) {
  net_redis_t *c = lua_touserdata(L, 3);
  while (net_redis_open(c)) {
    int is_err = 0;
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    int rc = redis_resp_next(L, net_redis_reader(c), &is_err);
    if (rc <= 0) return rc < 0 ? 1 : 0;
    lua_pushboolean(L, is_err);
    lua_call(L, 3, 0);
  }
  return 0;
}

static void redis_on_data(net_redis_t *c, ssize_t n) {
  lua_State *L = redis_L;
  if (n < 0) {
    redis_lost(c, n == UV_EOF ? "connection closed by the server"
                  : n == UV_EMSGSIZE ? "reply too large" : uv_strerror((int)n));
    return;
  }
  int top = lua_gettop(L);
  lua_pushcfunction(L, redis_deliver);
  if (!redis_push_call(c, CB_REPLY)) {
    lua_settop(L, top);
    return;
  }
  lua_pushlightuserdata(L, c);
  if (lua_pcall(L, 3, 1, 0) != 0) mf_log("error delivering a redis reply: %s", lua_tostring(L, -1));
  if (!lua_isnil(L, -1) && net_redis_open(c)) {
    char err[256];
    snprintf(err, sizeof err, "%s", lua_tostring(L, -1));
    lua_settop(L, top);
    redis_lost(c, err);
    return;
  }
  lua_settop(L, top);
}

static void redis_on_error(net_redis_t *c, int status) { redis_lost(c, uv_strerror(status)); }

void bind_redis_emit(lua_State *L, const char *event) {
  int cb = strcmp(event, "exit") == 0 ? CB_EXIT : CB_DRAIN;
  if (redis_refs[cb] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, redis_refs[cb]);
  luastate_pcall(L, 0, 0, "error closing the redis connections");
}

void bind_redis_open(lua_State *L, uv_loop_t *loop) {
  static const net_redis_callbacks_t cbs = {redis_on_connect, redis_on_data, redis_on_error};
  static const luaL_Reg fns[] = {{"on", redis_on},       {"new", redis_new},     {"connect", redis_connect},
                                 {"send", redis_send},   {"close", redis_close}, {NULL, NULL}};
  redis_L = L;
  net_redis_init(loop, &cbs);
  bind_type_init(L, &redis_type, "redis connection");
  bind_module_open(L, "moonfork.core.redis", fns);
  lua_pop(L, 1);
}
