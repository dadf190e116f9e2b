/* bind_ws.c -- WebSocket connections as Lua sees them: `moonfork.core.ws`.
 *
 * accept() answers an upgrade request with its 101 (the Sec-WebSocket-Accept worked out here, the
 * permessage-deflate offer negotiated here) and takes the HTTP connection over (http_conn_takeover);
 * the connection is a binding object (bind_obj.h) whose target is the `ws` object
 * lua/moonfork/websocket.lua made, which every event is called with. The handshake's checks on the
 * request (method, version, tokens) are the Lua half's: they need the header table it already has. */
#include "bind_ws.h"

#include <lauxlib.h>
#include <string.h>

#include "bind_http.h"
#include "bind_obj.h"
#include "http.h"
#include "luastate.h"
#include "ws_conn.h"
#include "ws_frame.h"
#include "ws_handshake.h"

static bind_type_t ws_type;

enum { CB_MESSAGE, CB_CLOSE, CB_DRAIN, CB_COUNT };
static const char *const ws_names[CB_COUNT] = {"message", "close", "drain"};
static int ws_refs[CB_COUNT] = {LUA_NOREF, LUA_NOREF, LUA_NOREF};

/* ws.on{ message = fn(ws, data, binary), close = fn(ws, code, reason), drain = fn(ws) } */
static int ws_on(lua_State *L) {
  bind_callbacks_set(L, 1, ws_names, ws_refs, CB_COUNT);
  return 0;
}

static void on_taken(void *arg, int fd, const char *rest, size_t n) { ws_conn_open(arg, fd, rest, n); }

/* The 101's header lines into b (arguments 4-6 of accept). -1 when the key is not a key. */
static int head_build(lua_State *L, mf_buf_t *b, ws_deflate_params_t *z, int *deflate) {
  size_t klen, plen = 0, elen = 0;
  const char *key = luaL_checklstring(L, 4, &klen);
  const char *proto = luaL_optlstring(L, 5, NULL, &plen);
  const char *offer = luaL_optlstring(L, 6, NULL, &elen);
  if (!ws_key_ok(key, klen)) return -1;
  char accept[29], ext[160];
  ws_accept_key(key, klen, accept);
  mf_buf_append(b, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ", 63);
  mf_buf_append(b, accept, 28);
  mf_buf_append(b, "\r\n", 2);
  if (proto) mf_buf_appendf(b, "Sec-WebSocket-Protocol: %.*s\r\n", (int)plen, proto);
  *deflate = offer && ws_deflate_negotiate(offer, elen, z, ext, sizeof ext);
  if (*deflate) mf_buf_appendf(b, "Sec-WebSocket-Extensions: %s\r\n", ext);
  return 0;
}

/* ws.accept(target, conn, gen, key, protocol, extension_offer, max_payload, idle_ms, ping_ms) -> ud,
 * compressed | nil, err. protocol: the subprotocol chosen (or nil); extension_offer: the request's
 * Sec-WebSocket-Extensions when compression is wanted (or nil). */
static int ws_accept(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  http_conn_t *hc = bind_http_conn(L, 2);
  uint32_t gen = (uint32_t)luaL_checknumber(L, 3);
  ws_options_t o = {(uint64_t)luaL_checknumber(L, 7), (uint32_t)luaL_optnumber(L, 8, 0), (uint32_t)luaL_optnumber(L, 9, 0), NULL};
  ws_deflate_params_t z;
  int deflate = 0;
  mf_buf_t head;
  mf_buf_init(&head);
  if (hc == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (head_build(L, &head, &z, &deflate) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "bad Sec-WebSocket-Key");
    return 2;
  }
  o.deflate = deflate ? &z : NULL;
  ws_conn_t *c = ws_conn_new(&o);
  int r = c ? http_conn_respond(hc, gen, 101, head.data, head.len, "", 0, 0, -1, 0) : UV_ENOMEM;
  mf_buf_free(&head);
  if (r < 0) {
    if (c) ws_conn_open(c, r, "", 0);
    lua_pushnil(L);
    lua_pushstring(L, r == UV_ENOMEM ? "out of memory" : "closed");
    return 2;
  }
  bind_obj_t *obj = bind_obj_new(L, &ws_type, c);
  *ws_conn_user_ref(c) = obj->self_ref;
  bind_obj_set_target(L, obj, 1);
  r = http_conn_takeover(hc, gen, on_taken, c);
  if (r != 0) ws_conn_open(c, r, "", 0); /* told "close" 1006: the object is closed */
  lua_pushboolean(L, deflate);
  return 2;
}

static ws_conn_t *check_ws(lua_State *L) { return bind_obj_check(L, 1, &ws_type)->ptr; }

/* ws.send(ud, data, opcode) -> true | false (slow down) | nil, "closed" */
static int ws_send(lua_State *L) {
  ws_conn_t *c = check_ws(L);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  int op = (int)luaL_checknumber(L, 3);
  if (c == NULL) goto closed;
  int r = ws_conn_send(c, op, p, n);
  if (r < 0) goto closed;
  lua_pushboolean(L, r);
  return 1;
closed:
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}

/* ws.close(ud, code, reason): starts the close handshake (nothing when closed or closing). */
static int ws_close(lua_State *L) {
  ws_conn_t *c = check_ws(L);
  unsigned code = (unsigned)luaL_optnumber(L, 2, 0);
  size_t n = 0;
  const char *reason = luaL_optlstring(L, 3, "", &n);
  if (c) ws_conn_close(c, code, reason, n);
  return 0;
}

/* ws.count() -> open WebSocket connections in this worker */
static int ws_count(lua_State *L) {
  lua_pushnumber(L, (lua_Number)ws_conn_count());
  return 1;
}

static void on_message(void *data, ws_conn_t *c, const char *p, size_t n, int binary) {
  lua_State *L = data;
  if (!bind_push_call(L, ws_refs[CB_MESSAGE], bind_obj_at(L, *ws_conn_user_ref(c)))) return;
  lua_pushlstring(L, p, n);
  lua_pushboolean(L, binary);
  luastate_pcall(L, 3, 0, "error in websocket 'message' handler");
}

static void on_close(void *data, ws_conn_t *c, unsigned code, const char *reason, size_t n) {
  lua_State *L = data;
  int *slot = ws_conn_user_ref(c);
  bind_obj_t *obj = bind_obj_at(L, *slot);
  *slot = LUA_NOREF;
  if (obj == NULL) return;
  int call = bind_push_call(L, ws_refs[CB_CLOSE], obj);
  bind_obj_invalidate(L, obj);
  if (!call) return;
  lua_pushnumber(L, code);
  lua_pushlstring(L, reason, n);
  luastate_pcall(L, 3, 0, "error in websocket 'close' handler");
}

static void on_drain(void *data, ws_conn_t *c) {
  lua_State *L = data;
  if (!bind_push_call(L, ws_refs[CB_DRAIN], bind_obj_at(L, *ws_conn_user_ref(c)))) return;
  luastate_pcall(L, 1, 0, "error in websocket 'drain' handler");
}

static const ws_callbacks_t ws_callbacks = {on_message, on_close, on_drain};

void bind_ws_open(lua_State *L, uv_loop_t *loop) {
  static const luaL_Reg fns[] = {{"on", ws_on},       {"accept", ws_accept}, {"send", ws_send},
                                 {"close", ws_close}, {"count", ws_count},   {NULL, NULL}};
  ws_init(loop, &ws_callbacks, L);
  bind_type_init(L, &ws_type, "websocket");
  bind_module_open(L, "moonfork.core.ws", fns);
  lua_pop(L, 1);
}
