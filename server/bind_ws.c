/* bind_ws.c -- WebSocket connections as Lua sees them: `moonfork.core.ws`.
 *
 * accept() answers an upgrade request with its 101 (the Sec-WebSocket-Accept worked out here, the
 * permessage-deflate offer negotiated here) and takes the HTTP connection over (http_conn_takeover).
 * The handshake's checks on the request (method, version, tokens) are the Lua half's: they need the
 * header table it already has.
 *
 * Memory first (issue 19: an idle WebSocket at half a kilobyte): the `ws` a script gets is one small
 * userdata with a metatable shared by all (its protocol and origin copied into it), not a table; C
 * does not pin it, so a script that keeps nothing for a connection has nothing of it in Lua. C keeps
 * a raw pointer to it while it lives (its __gc clears that), and a registry ref for each listener
 * only once one is set. Events call the Lua half with the listener, never with the `ws`. */
#include "bind_ws.h"

#include <lauxlib.h>
#include <string.h>

#include "bind_http.h"
#include "bind_obj.h"
#include "http.h"
#include "log.h"
#include "luastate.h"
#include "ws_chan.h"
#include "ws_conn.h"
#include "ws_frame.h"
#include "ws_handshake.h"

enum { CB_MESSAGE, CB_CLOSE, CB_DRAIN, CB_COUNT };
_Static_assert(CB_COUNT == WS_NREFS, "a listener ref per event");
static const char *const ws_names[CB_COUNT] = {"message", "close", "drain"};

/* The userdata a script holds as `ws`: the connection while it is open, what it closed with after. */
typedef struct {
  ws_conn_t *c;       /* NULL once closed */
  uint16_t code;      /* the close code, once closed */
  uint16_t plen;      /* the protocol's length */
  uint32_t olen;      /* the origin's length */
  uint8_t compressed;
  uint8_t has_origin;
  char str[];         /* the protocol, then the origin */
} ws_ud_t;

#define RUNNERS_MAX 8 /* idle coroutines kept for messages (one is enough unless listeners nest) */

static struct {
  int mt_ref;            /* the userdata's metatable, compared by identity */
  const void *mt;        /* the same, as a pointer: ud_check compares it without a registry lookup */
  int reasons_ref;       /* closed userdata (light) -> the close reason, while the userdata lives */
  int cb[CB_COUNT];      /* the Lua half's dispatchers: fn(listener, ...) */
  /* the message fast path (see on_message): sched.runner, its DONE, the 'message' error reporter,
   * the strings "text" and "binary", and the idle coroutines with their registry refs */
  int runner_ref, done_ref, report_ref, kind_ref[2];
  const void *done;
  lua_State *idle[RUNNERS_MAX];
  int idle_ref[RUNNERS_MAX];
  int nidle;
} bws = {LUA_NOREF, NULL, LUA_NOREF, {LUA_NOREF, LUA_NOREF, LUA_NOREF},
         LUA_NOREF, LUA_NOREF, LUA_NOREF, {LUA_NOREF, LUA_NOREF}, NULL, {NULL}, {0}, 0};

static ws_ud_t *ud_check(lua_State *L, int idx) {
  ws_ud_t *u = lua_touserdata(L, idx);
  if (u != NULL && lua_getmetatable(L, idx)) {
    int ours = lua_topointer(L, -1) == bws.mt;
    lua_pop(L, 1);
    if (ours) return u;
  }
  luaL_typerror(L, idx, "websocket");
  return NULL;
}

/* Replaces *ref with a ref to the value of field k of the table at 1 (nil: LUA_NOREF). */
static void field_ref(lua_State *L, const char *k, int *ref) {
  lua_getfield(L, 1, k);
  luaL_unref(L, LUA_REGISTRYINDEX, *ref);
  *ref = lua_isnil(L, -1) ? (lua_pop(L, 1), LUA_NOREF) : luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ws.on{ message = fn(listener, data, binary), close = fn(listener, code, reason), drain = fn(listener),
 *        runner = sched.runner, done = sched.DONE, message_error = fn(trace, data, kind) }
 * The last three (optional) turn on the fast path for a listener that is a function (on_message). */
static int ws_on(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  for (int i = 0; i < CB_COUNT; i++) {
    lua_getfield(L, 1, ws_names[i]);
    if (!lua_isfunction(L, -1)) luaL_error(L, "callback '%s' must be a function", ws_names[i]);
    luaL_unref(L, LUA_REGISTRYINDEX, bws.cb[i]);
    bws.cb[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  field_ref(L, "runner", &bws.runner_ref);
  field_ref(L, "message_error", &bws.report_ref);
  lua_getfield(L, 1, "done");
  bws.done = lua_topointer(L, -1);
  field_ref(L, "done", &bws.done_ref); /* (held: the pointer stays that table's) */
  static const char *const kinds[2] = {"text", "binary"};
  for (int i = 0; i < 2; i++)
    if (bws.kind_ref[i] == LUA_NOREF) {
      lua_pushstring(L, kinds[i]);
      bws.kind_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
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

/* A new `ws` for c: protocol and origin (either may be absent) copied into it. */
static ws_ud_t *ud_new(lua_State *L, ws_conn_t *c, int deflate) {
  size_t plen = 0, olen = 0;
  const char *proto = luaL_optlstring(L, 5, NULL, &plen);
  const char *origin = luaL_optlstring(L, 10, NULL, &olen);
  if (plen > UINT16_MAX) plen = UINT16_MAX; /* (one of the script's own protocols: never this long) */
  ws_ud_t *u = lua_newuserdata(L, sizeof *u + plen + olen);
  u->c = c;
  u->code = 0;
  u->plen = (uint16_t)plen;
  u->olen = (uint32_t)olen;
  u->compressed = (uint8_t)deflate;
  u->has_origin = origin != NULL;
  if (plen) memcpy(u->str, proto, plen);
  if (olen) memcpy(u->str + plen, origin, olen);
  lua_rawgeti(L, LUA_REGISTRYINDEX, bws.mt_ref);
  lua_setmetatable(L, -2);
  return u;
}

/* ws.accept(conn, gen, key, protocol, extension_offer, max_payload, idle_ms, ping_ms, origin) -> ws | nil,
 * err. protocol: the subprotocol chosen (or nil); extension_offer: the request's Sec-WebSocket-Extensions
 * when compression is wanted (or nil). A `ws` that closed at once (ws.state) is returned all the same. */
static int ws_accept(lua_State *L) {
  http_conn_t *hc = bind_http_conn(L, 1);
  lua_pushnil(L);
  lua_insert(L, 1); /* the arguments where head_build reads them (4-6) */
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
  *ws_conn_ud(c) = ud_new(L, c, deflate);
  r = http_conn_takeover(hc, gen, on_taken, c);
  if (r != 0) ws_conn_open(c, r, "", 0); /* told "close" 1006: the ws is closed */
  return 1;
}

/* ws.send(ws, data, opcode) -> true | false (slow down) | nil, "closed" */
static int ws_send(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  int op = (int)luaL_checknumber(L, 3);
  if (u->c == NULL) goto closed;
  int r = ws_conn_send(u->c, op, p, n);
  if (r < 0) goto closed;
  lua_pushboolean(L, r);
  return 1;
closed:
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}

/* ws.close(ws, code, reason): starts the close handshake (nothing when closed or closing). */
static int ws_close(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  unsigned code = (unsigned)luaL_optnumber(L, 2, 0);
  size_t n = 0;
  const char *reason = luaL_optlstring(L, 3, "", &n);
  if (u->c) ws_conn_close(u->c, code, reason, n);
  return 0;
}

/* The channel name at idx: a string of 1 to WS_CHANNEL_MAX bytes (the Lua half checked it). */
static const char *channel_arg(lua_State *L, int idx, size_t *n) {
  const char *name = luaL_checklstring(L, idx, n);
  luaL_argcheck(L, *n >= 1 && *n <= WS_CHANNEL_MAX, idx, "a channel is 1 to 1024 bytes");
  return name;
}

/* ws.subscribe(ws, channel) -> true (joined), false (a member already) | nil, "closed" */
static int ws_subscribe(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  size_t n;
  const char *name = channel_arg(L, 2, &n);
  int r = u->c ? ws_chan_join(u->c, name, n) : UV_EPIPE;
  if (r >= 0) {
    lua_pushboolean(L, r);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, r == UV_ENOMEM ? "out of memory" : "closed");
  return 2;
}

/* ws.unsubscribe(ws, channel) -> true (left), false (not a member, or closed) */
static int ws_unsubscribe(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  size_t n;
  const char *name = channel_arg(L, 2, &n);
  lua_pushboolean(L, u->c ? ws_chan_leave(u->c, name, n) : 0);
  return 1;
}

/* ws.publish(channel, data, opcode) -> how many members in this worker it was written to */
static int ws_publish(lua_State *L) {
  size_t n, len;
  const char *name = channel_arg(L, 1, &n);
  const char *p = luaL_checklstring(L, 2, &len);
  int op = (int)luaL_checknumber(L, 3);
  luaL_argcheck(L, op == WS_OP_TEXT || op == WS_OP_BINARY, 3, "1 (text) or 2 (binary)");
  lua_pushnumber(L, (lua_Number)ws_chan_publish(name, n, op, p, len));
  return 1;
}

/* ws.envelope(channel, data, opcode) -> the message for the other workers and hosts (ws_frame.h) */
static int ws_envelope(lua_State *L) {
  size_t n, len;
  const char *name = channel_arg(L, 1, &n);
  const char *p = luaL_checklstring(L, 2, &len);
  uint8_t head[WS_ENVELOPE_HEAD];
  ws_envelope_head(head, (int)luaL_checknumber(L, 3), n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)head, sizeof head);
  luaL_addlstring(&b, name, n);
  luaL_addlstring(&b, p, len);
  luaL_pushresult(&b);
  return 1;
}

/* ws.deliver(envelope) -> how many members in this worker it was written to, or nil when the string
 * is not an envelope */
static int ws_deliver(lua_State *L) {
  size_t len;
  const char *p = luaL_checklstring(L, 1, &len);
  ws_envelope_t e;
  if (ws_envelope_parse(p, len, &e) != 0) return 0;
  lua_pushnumber(L, (lua_Number)ws_chan_publish(e.name, e.nlen, e.opcode, e.data, e.dlen));
  return 1;
}

/* ws.subscribers(channel) -> members of the channel in this worker */
static int ws_subscribers(lua_State *L) {
  size_t n;
  const char *name = channel_arg(L, 1, &n);
  lua_pushnumber(L, (lua_Number)ws_chan_count(name, n));
  return 1;
}

/* ws.count() -> open WebSocket connections in this worker */
static int ws_count(lua_State *L) {
  lua_pushnumber(L, (lua_Number)ws_conn_count());
  return 1;
}

static int event_arg(lua_State *L, int idx) {
  int i = (int)luaL_checknumber(L, idx);
  luaL_argcheck(L, i >= 1 && i <= CB_COUNT, idx, "event 1-3");
  return i - 1;
}

/* ws.listener(ws, event) -> what listens to event 1-3 (message, close, drain), or nil */
static int ws_listener(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  int i = event_arg(L, 2);
  if (u->c == NULL) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ws_conn_refs(u->c)[i]);
  return 1;
}

/* ws.listen(ws, event, value): value (a function or a table of them) listens to event 1-3; false when
 * the ws is closed (nothing kept). */
static int ws_listen(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  int i = event_arg(L, 2);
  luaL_checkany(L, 3);
  if (u->c == NULL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int *ref = &ws_conn_refs(u->c)[i];
  if (*ref == LUA_NOREF) {
    lua_settop(L, 3);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else {
    lua_pushvalue(L, 3);
    lua_rawseti(L, LUA_REGISTRYINDEX, *ref);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ws.state(ws) -> nil while open, else the close code and reason */
static int ws_state(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  if (u->code == 0) return 0;
  lua_pushnumber(L, u->code);
  lua_rawgeti(L, LUA_REGISTRYINDEX, bws.reasons_ref);
  lua_pushlightuserdata(L, u);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "");
  }
  return 2;
}

/* ws.field(ws, name) -> the protocol, the origin, compressed (true or nil) */
static int ws_field(lua_State *L) {
  ws_ud_t *u = ud_check(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k == NULL) return 0;
  if (strcmp(k, "protocol") == 0 && u->plen) lua_pushlstring(L, u->str, u->plen);
  else if (strcmp(k, "origin") == 0 && u->has_origin) lua_pushlstring(L, u->str + u->plen, u->olen);
  else if (strcmp(k, "compressed") == 0 && u->compressed) lua_pushboolean(L, 1);
  else return 0;
  return 1;
}

/* __gc: the script let go of its ws; the connection goes on without it (its listeners stay). */
static int ws_gc(lua_State *L) {
  ws_ud_t *u = lua_touserdata(L, 1);
  if (u->c) *ws_conn_ud(u->c) = NULL;
  u->c = NULL;
  if (u->code) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, bws.reasons_ref);
    lua_pushlightuserdata(L, u);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  return 0;
}

/* Calls the Lua half's dispatcher i with the listener ref and the nargs values on the stack top. */
static void dispatch(lua_State *L, int i, int ref, int nargs, const char *what) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, bws.cb[i]);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_insert(L, -nargs - 2);
  lua_insert(L, -nargs - 2);
  luastate_pcall(L, nargs + 1, 0, what);
}

/* An idle message coroutine (sched.runner's), or NULL when none could be made; *ref is its registry
 * ref, the caller's until it goes back (runner_put) or to the scheduler (luaL_unref). */
static lua_State *runner_get(lua_State *L, int *ref) {
  if (bws.nidle > 0) {
    bws.nidle--;
    *ref = bws.idle_ref[bws.nidle];
    return bws.idle[bws.nidle];
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, bws.runner_ref);
  if (lua_pcall(L, 0, 1, 0) != 0 || !lua_isthread(L, -1)) {
    mf_log("websocket: no coroutine for a message: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 1);
    return NULL;
  }
  lua_State *co = lua_tothread(L, -1);
  *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return co;
}

/* Keeps an idle coroutine for the next message (there is room: one was taken before). */
static void runner_put(lua_State *co, int ref) {
  bws.idle[bws.nidle] = co;
  bws.idle_ref[bws.nidle++] = ref;
}

/* The fast path of a message whose listener is one function: it runs in a pooled coroutine (as
 * sched.spawn would run it: under xpcall, errors to the reporter, free to wait) resumed from here, with
 * no Lua dispatcher, spawn or pcall between. The coroutine comes back with DONE when the listener
 * returned (kept for the next message); one that waits is the scheduler's from then on. 0, or -1 when
 * the fast path is off or the listener is a table (nothing was run). */
static int message_fast(lua_State *L, int ref, const char *p, size_t n, int binary) {
  if (bws.runner_ref == LUA_NOREF || bws.report_ref == LUA_NOREF) return -1;
  int co_ref;
  lua_State *co = runner_get(L, &co_ref);
  if (co == NULL) return -1;
  lua_rawgeti(co, LUA_REGISTRYINDEX, ref); /* (a new one has body below: resumed, it starts there) */
  if (!lua_isfunction(co, -1)) { /* a table of listeners: the dispatcher's */
    lua_pop(co, 1);
    runner_put(co, co_ref);
    return -1;
  }
  lua_pushlstring(co, p, n);
  lua_rawgeti(co, LUA_REGISTRYINDEX, bws.kind_ref[binary != 0]);
  lua_pushnil(co);
  lua_rawgeti(co, LUA_REGISTRYINDEX, bws.report_ref);
  int st = lua_resume(co, 5);
  if (st == LUA_YIELD && lua_gettop(co) == 1 && lua_topointer(co, 1) == bws.done && bws.nidle < RUNNERS_MAX) {
    lua_settop(co, 0);
    runner_put(co, co_ref);
    return 0;
  }
  if (st != LUA_YIELD) mf_log("websocket: internal error in a message coroutine: %s", lua_isstring(co, -1) ? lua_tostring(co, -1) : "?");
  luaL_unref(L, LUA_REGISTRYINDEX, co_ref); /* waiting: the scheduler holds it (or nobody, as for spawn) */
  return 0;
}

/* The hot path (every message). A listener that is a function runs by message_fast; a table of them
 * goes through the Lua half's dispatcher, under a plain pcall that only guards the dispatcher (each
 * listener runs under xpcall in its own coroutine: sched.spawn). */
static void on_message(void *data, ws_conn_t *c, const char *p, size_t n, int binary) {
  lua_State *L = data;
  int ref = ws_conn_refs(c)[CB_MESSAGE];
  if (ref == LUA_NOREF || bws.cb[CB_MESSAGE] == LUA_NOREF) return;
  if (message_fast(L, ref, p, n, binary) == 0) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, bws.cb[CB_MESSAGE]);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_pushlstring(L, p, n);
  lua_pushboolean(L, binary);
  if (lua_pcall(L, 3, 0, 0) != 0) {
    mf_log("error in websocket 'message' handler: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 1);
  }
}

/* The ws (if the script still has it) learns the code and reason; the listeners are let go. */
static void on_close(void *data, ws_conn_t *c, unsigned code, const char *reason, size_t n) {
  lua_State *L = data;
  int *refs = ws_conn_refs(c);
  ws_ud_t *u = *ws_conn_ud(c);
  *ws_conn_ud(c) = NULL;
  if (u) {
    u->c = NULL;
    u->code = (uint16_t)code;
    if (n) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, bws.reasons_ref);
      lua_pushlightuserdata(L, u);
      lua_pushlstring(L, reason, n);
      lua_rawset(L, -3);
      lua_pop(L, 1);
    }
  }
  int ref = refs[CB_CLOSE];
  refs[CB_CLOSE] = LUA_NOREF;
  if (ref != LUA_NOREF && bws.cb[CB_CLOSE] != LUA_NOREF) {
    lua_pushnumber(L, code);
    lua_pushlstring(L, reason, n);
    dispatch(L, CB_CLOSE, ref, 2, "error in websocket 'close' handler");
  }
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  for (int i = 0; i < CB_COUNT; i++) {
    luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
    refs[i] = LUA_NOREF;
  }
}

static void on_drain(void *data, ws_conn_t *c) {
  lua_State *L = data;
  int ref = ws_conn_refs(c)[CB_DRAIN];
  if (ref == LUA_NOREF || bws.cb[CB_DRAIN] == LUA_NOREF) return;
  dispatch(L, CB_DRAIN, ref, 0, "error in websocket 'drain' handler");
}

static const ws_callbacks_t ws_callbacks = {on_message, on_close, on_drain};

void bind_ws_open(lua_State *L, uv_loop_t *loop) {
  static const luaL_Reg fns[] = {{"on", ws_on},         {"accept", ws_accept}, {"send", ws_send},
                                 {"close", ws_close},   {"count", ws_count},   {"listener", ws_listener},
                                 {"listen", ws_listen}, {"state", ws_state},   {"field", ws_field},
                                 {"subscribe", ws_subscribe}, {"unsubscribe", ws_unsubscribe},
                                 {"publish", ws_publish}, {"envelope", ws_envelope}, {"deliver", ws_deliver},
                                 {"subscribers", ws_subscribers}, {NULL, NULL}};
  ws_init(loop, &ws_callbacks, L);
  lua_newtable(L);
  lua_pushcfunction(L, ws_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushvalue(L, -1);
  bws.mt = lua_topointer(L, -1);
  bws.mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  bws.reasons_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  bind_module_open(L, "moonfork.core.ws", fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "meta"); /* the Lua half sets __index (its methods) */
  lua_pop(L, 1);
}
