/* bind_http.c -- requests into Lua and responses out of it: the bridge between http.c and moonfork.http.
 *
 * Lua sees a connection as the `res` of its current request (bind_res.c): a binding object whose
 * pointer is cleared when that response ends or the connection closes, so a handler that answers late
 * finds it gone instead of touching freed memory or a later request. drain, body and close are called
 * with it. The Lua half (lua/moonfork/http.lua) builds req and runs the handler in a coroutine. */
#include "bind_http.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_parse.h"
#include "http_pass.h"
#include "util.h"

#include "bind_obj.h"
#include "bind_res.h"
#include "luastate.h"

static bind_type_t conn_type;

enum { CB_REQUEST, CB_CLOSE, CB_DRAIN, CB_BODY, CB_COUNT };
static const char *const http_names[CB_COUNT] = {"request", "close", "drain", "body"};
static int http_refs[CB_COUNT] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};

int bind_http_serving(void) { return http_refs[CB_REQUEST] != LUA_NOREF; }

/* http.on{ request = fn(conn, gen, method, url, version, head, body, trailers) -> res, close = fn(res),
 *          drain = fn(res), body = fn(res, ended, trailers) } (once: moonfork.listen). body is false
 * when it is still arriving: http.read gets it, and `body` says when to ask again. */
static int http_on(lua_State *L) {
  if (bind_http_serving()) return luaL_error(L, "moonfork.listen() was already called");
  bind_callbacks_set(L, 1, http_names, http_refs, CB_COUNT);
  return 0;
}

/* The connection behind argument 1, NULL when it has closed; raises when it is not a connection. */
static http_conn_t *check_conn(lua_State *L) { return bind_obj_check(L, 1, &conn_type)->ptr; }

http_conn_t *bind_http_conn(lua_State *L, int idx) { return bind_obj_check(L, idx, &conn_type)->ptr; }

/* Argument 2, the request's generation; nil for the connection's current one (a binding object is
 * made for one response and invalidated when it ends, so it cannot reach a later request). */
static uint32_t check_gen(lua_State *L, const http_conn_t *c) {
  if (lua_isnoneornil(L, 2)) return c != NULL ? http_conn_gen(c) : 0;
  return (uint32_t)luaL_checknumber(L, 2);
}

/* http.gen(conn) -> the generation of the connection's current request (0 once it has closed). */
static int core_gen(lua_State *L) {
  http_conn_t *c = check_conn(L);
  lua_pushnumber(L, c != NULL ? http_conn_gen(c) : 0);
  return 1;
}


/* http.abort(conn[, gen]): a 500 if nothing was sent yet, else the connection is dropped. */
static int core_abort(lua_State *L) {
  http_conn_t *c = check_conn(L);
  uint32_t gen = check_gen(L, c);
  if (c != NULL) http_conn_abort(c, gen);
  return 0;
}

static int core_remote(lua_State *L);
static int core_headers(lua_State *L);

/* http.read(conn, gen, whole) -> the next piece (whole: the whole body) | nil at the end | false: wait
 * for the `body` callback | nil, "closed" / "timeout" / "too large" (see http_conn_body_read). */
static int core_read(lua_State *L) {
  http_conn_t *c = check_conn(L);
  uint32_t gen = (uint32_t)luaL_checknumber(L, 2);
  const char *data;
  size_t len;
  int r = c ? http_conn_body_read(c, gen, lua_toboolean(L, 3), &data, &len) : UV_EPIPE;
  switch (r) {
    case HTTP_BODY_PIECE:
      lua_pushlstring(L, data, len);
      http_conn_body_taken(c);
      return 1;
    case HTTP_BODY_END:
      lua_pushnil(L);
      return 1;
    case HTTP_BODY_WAIT:
      lua_pushboolean(L, 0);
      return 1;
    default:
      lua_pushnil(L);
      lua_pushstring(L, r == UV_ETIMEDOUT ? "timeout" : r == UV_EMSGSIZE ? "too large" : "closed");
      return 2;
  }
}

void bind_http_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"on", http_on},           {"abort", core_abort}, {"remote", core_remote},
                                 {"headers", core_headers}, {"read", core_read},   {"gen", core_gen},
                                 {NULL, NULL}};
  bind_type_init(L, &conn_type, "connection");
  bind_module_open(L, "moonfork.core.http", fns);
  bind_res_open(L, &conn_type); /* writeHead, write, finish and the res's fields */
  lua_pop(L, 1);
}

/* The request's headers travel to Lua as one packed string, in the form the parser stored them as
 * they arrived (http_parse.h: per header the name's and the value's lengths as native uint32s, then
 * the name and the value), and become a table only when the handler first reads req.headers
 * (core.headers). One string instead of a table and two strings per header: most handlers never
 * look, and an unchanged head (a client sending the same headers again) is already interned. */

/* core.headers(packed) -> { name = value, or an array of values once a name repeats }, names in
 * lower case. */
static int core_headers(lua_State *L) {
  size_t len, off = 0, n, vlen;
  const char *block = luaL_checklstring(L, 1, &len), *p, *value;
  char small[64];
  int more;
  lua_newtable(L);
  while ((more = http_headers_next(block, len, &off, &p, &n, &value, &vlen)) == 1) {
    char *name = n <= sizeof small ? small : malloc(n);
    if (name == NULL) return luaL_error(L, "out of memory");
    for (size_t k = 0; k < n; k++) name[k] = (char)(p[k] >= 'A' && p[k] <= 'Z' ? p[k] + 32 : p[k]);
    lua_pushlstring(L, name, n);
    if (name != small) free(name);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    int t = lua_type(L, -1);
    if (t == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushlstring(L, value, vlen);
      lua_rawset(L, -3);
    } else if (t == LUA_TSTRING) {
      lua_createtable(L, 2, 0);
      lua_insert(L, -2);
      lua_rawseti(L, -2, 1);
      lua_pushlstring(L, value, vlen);
      lua_rawseti(L, -2, 2);
      lua_rawset(L, -3);
    } else {
      lua_pushlstring(L, value, vlen);
      lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
      lua_pop(L, 2);
    }
  }
  if (more < 0) return luaL_error(L, "core.headers: not a packed header block");
  return 1;
}

int bind_http_on_request(void *data, http_conn_t *c, uint32_t gen, const http_request_t *req) {
  lua_State *L = data;
  lua_rawgeti(L, LUA_REGISTRYINDEX, http_refs[CB_REQUEST]);
  bind_res_new(L, c); /* the res, which is also the connection's binding object */
  lua_pushnumber(L, gen);
  lua_pushstring(L, req->method);
  lua_pushlstring(L, req->url, req->url_len);
  if (req->http_major == 1 && req->http_minor == 1)
    lua_pushliteral(L, "1.1");
  else if (req->http_major == 1 && req->http_minor == 0)
    lua_pushliteral(L, "1.0");
  else
    lua_pushfstring(L, "%d.%d", req->http_major, req->http_minor);
  lua_pushlstring(L, req->headers, req->headers_len); /* as the parser packed them */
  if (req->body != NULL)
    lua_pushlstring(L, req->body, req->body_len);
  else
    lua_pushboolean(L, 0); /* still arriving */
  if (req->trailers_len > 0) /* rare: nil costs nothing */
    lua_pushlstring(L, req->trailers, req->trailers_len);
  else
    lua_pushnil(L);
  return luastate_pcall(L, 8, 0, "internal error dispatching a request") != 0 ? -1 : 0;
}

/* The connection is gone: its object is invalidated; close(res) when a response was in flight. */
void bind_http_on_conn_closed(void *data, http_conn_t *c, int in_flight) {
  http_pass_on_conn_closed(c); /* a pass relaying for it stops */
  bind_res_closed(data, c, in_flight, http_refs[CB_CLOSE]);
}

/* http.remote(conn) -> the peer's address, or nil, "ECLOSED: ..." */
static int core_remote(lua_State *L) {
  http_conn_t *c = check_conn(L);
  if (c == NULL) return bind_push_closed(L, &conn_type);
  lua_pushstring(L, http_conn_remote(c));
  return 1;
}

void bind_http_on_drain(void *data, http_conn_t *c) {
  lua_State *L = data;
  if (http_pass_on_drain(c)) return; /* a pass is relaying to it */
  if (http_refs[CB_DRAIN] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, http_refs[CB_DRAIN]);
  if (bind_res_push(L, c) == NULL) {
    lua_pop(L, 1);
    return;
  }
  luastate_pcall(L, 1, 0, "error in drain handler");
}

/* A body still arriving has news for its handler: body(res, ended, trailers). */
void bind_http_on_body(void *data, http_conn_t *c, int end, const char *trailers, size_t trailers_len) {
  lua_State *L = data;
  if (http_pass_on_body(c)) return; /* a pass is relaying its body */
  if (http_refs[CB_BODY] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, http_refs[CB_BODY]);
  if (bind_res_push(L, c) == NULL) {
    lua_pop(L, 1);
    return;
  }
  lua_pushboolean(L, end);
  if (trailers_len > 0)
    lua_pushlstring(L, trailers, trailers_len);
  else
    lua_pushnil(L);
  luastate_pcall(L, 3, 0, "error in body handler");
}
