/* bind_tcp.c -- outbound sockets as Lua sees them: `moonfork.core.tcp`, sockets as binding objects.
 *
 * A socket is a binding object (bind_obj.h) over its net_tcp_t, pinned while open. Its target is the
 * socket object lua/moonfork/socket.lua made, and every event (connected, data, sent) is called with it:
 * the Lua half decides what waits, for how long, and when to close. Errors a script sees are the
 * cosocket's strings ("closed", "connection refused", "timeout" is the Lua half's), not "ENAME: ...":
 * drivers written for OpenResty match on them. Data to send may be a nested table of strings and
 * numbers: it goes out as one uv_buf_t array, never concatenated. */
#include "bind_tcp.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "bind_obj.h"
#include "luastate.h"
#include "net_tcp.h"
#include "net_tls.h"

static bind_type_t sock_type;
#define TLS_SESSION_MT "moonfork.tls_session" /* userdata: one net_tls_session_t * */
static lua_State *tcp_L; /* the main thread: callbacks never run on the coroutine that made the socket */

enum { CB_CONNECTED, CB_DATA, CB_SENT, CB_RESOLVED, CB_HANDSHAKE, CB_DRAIN, CB_EXIT, CB_COUNT };
static const char *const tcp_names[CB_COUNT] = {"connected", "data",      "sent", "resolved",
                                                "handshake", "drain", "exit"};
static int tcp_refs[CB_COUNT] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};

#define TCP_MAX_DEPTH 32 /* nesting of tables given to send */

/* The cosocket's text for a libuv error: "closed" for the peer's end, else libuv's message
 * ("connection refused", "connection reset by peer", ...). */
static void tcp_push_error(lua_State *L, int r) {
  lua_pushstring(L, r == UV_EOF ? "closed" : uv_strerror(r));
}

static int tcp_fail(lua_State *L, int r) {
  lua_pushnil(L);
  tcp_push_error(L, r);
  return 2;
}

/* The open socket in argument 1, or NULL (closed). */
static net_tcp_t *tcp_arg(lua_State *L) { return bind_obj_check(L, 1, &sock_type)->ptr; }

/* tcp.on{ connected = fn(sock, err), data = fn(sock, chunk | nil, err), sent = fn(sock, err),
 *         resolved = fn(waiter, addrs | nil, err), handshake = fn(sock, err), drain = fn(), exit = fn() } */
static int tcp_on(lua_State *L) {
  bind_callbacks_set(L, 1, tcp_names, tcp_refs, CB_COUNT);
  return 0;
}

/* tcp.new(target, is_unix) -> ud | nil, err */
static int tcp_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  net_tcp_t *s = net_tcp_new(lua_toboolean(L, 2));
  if (s == NULL) return tcp_fail(L, UV_ENOMEM);
  bind_obj_t *obj = bind_obj_new(L, &sock_type, s);
  *net_tcp_user_ref(s) = obj->self_ref;
  bind_obj_set_target(L, obj, 1);
  return 1;
}

/* tcp.connect(ud, ip, port) or tcp.connect(ud, path) -> true | nil, err; then connected(sock, err) */
static int tcp_connect(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  const char *where = luaL_checkstring(L, 2);
  if (s == NULL) return tcp_fail(L, UV_EOF);
  int r;
  if (lua_isnoneornil(L, 3)) {
    r = net_tcp_connect_unix(s, where);
  } else {
    int port = (int)luaL_checkinteger(L, 3);
    struct sockaddr_storage addr;
    r = strchr(where, ':') ? uv_ip6_addr(where, port, (struct sockaddr_in6 *)&addr)
                           : uv_ip4_addr(where, port, (struct sockaddr_in *)&addr);
    if (r == 0) r = net_tcp_connect(s, (struct sockaddr *)&addr);
  }
  if (r != 0) return tcp_fail(L, r);
  lua_pushboolean(L, 1);
  return 1;
}

/* tcp.read(ud, on) -> true | nil, err */
static int tcp_read(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  if (s == NULL) return tcp_fail(L, UV_EOF);
  int r = net_tcp_read(s, lua_toboolean(L, 2));
  if (r != 0) return tcp_fail(L, r);
  lua_pushboolean(L, 1);
  return 1;
}

typedef struct {
  uv_buf_t *bufs;
  unsigned n, cap;
  size_t total;
} tcp_gather_t;

static void tcp_gather_add(lua_State *L, tcp_gather_t *g, const char *p, size_t len) {
  if (len == 0) return;
  if (g->n == g->cap) {
    unsigned cap = g->cap ? g->cap * 2 : 16;
    uv_buf_t *b = realloc(g->bufs, cap * sizeof *b);
    if (b == NULL) luaL_error(L, "out of memory");
    g->bufs = b;
    g->cap = cap;
  }
  g->bufs[g->n++] = uv_buf_init((char *)p, (unsigned)len);
  g->total += len;
}

/* Adds the value at idx (a string, a number, or an array of them, nested) to g. Numbers are turned
 * into strings left on the stack, so they live until the write is done. */
static void tcp_gather(lua_State *L, tcp_gather_t *g, int idx, int depth) {
  size_t len;
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING) {
    const char *p = lua_tolstring(L, idx, &len);
    tcp_gather_add(L, g, p, len);
  } else if (t == LUA_TNUMBER) {
    luaL_checkstack(L, 2, "send: too many numbers");
    lua_pushvalue(L, idx);
    const char *p = lua_tolstring(L, -1, &len);
    tcp_gather_add(L, g, p, len);
  } else if (t == LUA_TTABLE && depth < TCP_MAX_DEPTH) {
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i <= n; i++) {
      luaL_checkstack(L, 2, "send: table too large");
      lua_rawgeti(L, idx, i);
      int top = lua_gettop(L);
      tcp_gather(L, g, top, depth + 1);
      if (lua_type(L, top) != LUA_TNUMBER) lua_remove(L, top); /* strings are held by the table */
    }
  } else {
    luaL_error(L, "bad data type %s in what to send", t == LUA_TTABLE ? "(tables nested too deep)" : lua_typename(L, t));
  }
}

/* tcp.send(ud, data) -> bytes, queued | nil, err */
static int tcp_send(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  luaL_checkany(L, 2);
  tcp_gather_t g = {NULL, 0, 0, 0};
  tcp_gather(L, &g, 2, 0);
  if (s == NULL) {
    free(g.bufs);
    return tcp_fail(L, UV_EOF);
  }
  int r = g.n ? net_tcp_write(s, g.bufs, g.n) : 0;
  free(g.bufs);
  if (r < 0) return tcp_fail(L, r);
  lua_pushnumber(L, (lua_Number)g.total);
  lua_pushboolean(L, r == 1);
  return 2;
}

/* tcp.keep_loop(ud, on): a pooled idle socket does not keep the worker's loop alive. */
static int tcp_keep_loop(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  if (s) net_tcp_keep_loop(s, lua_toboolean(L, 2));
  return 0;
}

/* tcp.tls(ud, server_name, verify[, session]) -> true | nil, err; then handshake(sock, err) */
static int tcp_tls(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  const char *name = luaL_optstring(L, 2, NULL);
  net_tls_session_t **reuse = lua_isnoneornil(L, 4) ? NULL : luaL_checkudata(L, 4, TLS_SESSION_MT);
  if (s == NULL) return tcp_fail(L, UV_EOF);
  int r = net_tcp_tls(s, name, lua_toboolean(L, 3), reuse ? *reuse : NULL);
  if (r == UV_ENOSYS && net_tls_error()) {
    lua_pushnil(L);
    lua_pushstring(L, net_tls_error()); /* OpenSSL could not be loaded */
    return 2;
  }
  if (r != 0) return tcp_fail(L, r);
  lua_pushboolean(L, 1);
  return 1;
}

/* tcp.session(ud) -> the TLS session of a socket after its handshake (a userdata to give to a later
 * tcp.tls), and whether this handshake resumed one; nil when the socket has no TLS. */
static int tcp_session(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  net_tls_t *t = s ? net_tcp_tls_of(s) : NULL;
  if (t == NULL) return 0;
  net_tls_session_t **box = lua_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_getmetatable(L, TLS_SESSION_MT);
  lua_setmetatable(L, -2);
  *box = net_tls_session(t);
  lua_pushboolean(L, net_tls_reused(t));
  return 2;
}

static int tls_session_gc(lua_State *L) {
  net_tls_session_t **box = luaL_checkudata(L, 1, TLS_SESSION_MT);
  net_tls_session_unref(*box);
  *box = NULL;
  return 0;
}

/* tcp.alive(ud[, take]) -> whether a pooled connection may be reused (the peer has not closed it);
 * with take, one that may is also taken out of the pool: it keeps the loop alive again (keep_loop). */
static int tcp_alive(lua_State *L) {
  net_tcp_t *s = tcp_arg(L);
  int alive = s != NULL && net_tcp_alive(s);
  if (alive && lua_toboolean(L, 2)) net_tcp_keep_loop(s, 1);
  lua_pushboolean(L, alive);
  return 1;
}

/* tcp.close(ud): closing twice is fine. */
static int tcp_close(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &sock_type);
  net_tcp_t *s = obj->ptr;
  if (s == NULL) return 0;
  *net_tcp_user_ref(s) = LUA_NOREF;
  bind_obj_invalidate(L, obj);
  net_tcp_close(s);
  return 0;
}

static void tcp_resolved(void *data, int status, const struct addrinfo *ai) {
  lua_State *L = tcp_L;
  int ref = (int)(intptr_t)data;
  if (tcp_refs[CB_RESOLVED] == LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, tcp_refs[CB_RESOLVED]);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (status != 0) {
    lua_pushnil(L);
    lua_pushstring(L, uv_strerror(status));
    luastate_pcall(L, 3, 0, "error in a socket's resolver callback");
    return;
  }
  lua_newtable(L);
  int n = 0;
  for (const struct addrinfo *a = ai; a; a = a->ai_next) {
    char name[64];
    if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
    if (uv_ip_name(a->ai_addr, name, sizeof name) != 0) continue;
    lua_pushstring(L, name);
    lua_rawseti(L, -2, ++n);
  }
  luastate_pcall(L, 2, 0, "error in a socket's resolver callback");
}

/* tcp.resolve(host, waiter) -> true | nil, err; then resolved(waiter, addrs | nil, err) */
static int tcp_resolve(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  luaL_checkany(L, 2);
  lua_pushvalue(L, 2);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  int r = net_tcp_resolve(host, tcp_resolved, (void *)(intptr_t)ref);
  if (r != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return tcp_fail(L, r);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Pushes the callback `cb` and the socket's target; 0 when there is no one to tell. */
static int tcp_push_call(net_tcp_t *s, int cb) {
  lua_State *L = tcp_L;
  return bind_push_call(L, tcp_refs[cb], bind_obj_at(L, *net_tcp_user_ref(s)));
}

/* cb(sock, nil) for success, cb(sock, err) for a failure. */
static void tcp_report(net_tcp_t *s, int cb, int status, const char *what) {
  if (!tcp_push_call(s, cb)) return;
  if (status == 0)
    lua_pushnil(tcp_L);
  else
    tcp_push_error(tcp_L, status);
  luastate_pcall(tcp_L, 2, 0, what);
}

static void tcp_on_connect(net_tcp_t *s, int status) {
  tcp_report(s, CB_CONNECTED, status, "error in a socket's connect callback");
}

static void tcp_on_read(net_tcp_t *s, const char *data, ssize_t n) {
  if (!tcp_push_call(s, CB_DATA)) return;
  if (n > 0) {
    lua_pushlstring(tcp_L, data, (size_t)n);
    luastate_pcall(tcp_L, 2, 0, "error in a socket's read callback");
    return;
  }
  lua_pushnil(tcp_L);
  tcp_push_error(tcp_L, (int)n);
  luastate_pcall(tcp_L, 3, 0, "error in a socket's read callback");
}

static void tcp_on_sent(net_tcp_t *s, int status) {
  tcp_report(s, CB_SENT, status, "error in a socket's send callback");
}

static void tcp_on_handshake(net_tcp_t *s, const char *err) {
  if (!tcp_push_call(s, CB_HANDSHAKE)) return;
  if (err)
    lua_pushstring(tcp_L, err);
  else
    lua_pushnil(tcp_L);
  luastate_pcall(tcp_L, 2, 0, "error in a socket's handshake callback");
}

void bind_tcp_emit(lua_State *L, const char *event) {
  int cb = strcmp(event, "exit") == 0 ? CB_EXIT : CB_DRAIN;
  if (tcp_refs[cb] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, tcp_refs[cb]);
  luastate_pcall(L, 0, 0, "error closing the socket pools");
}

void bind_tcp_open(lua_State *L, uv_loop_t *loop, const mf_config_t *cfg) {
  static const net_tcp_callbacks_t cbs = {tcp_on_connect, tcp_on_read, tcp_on_sent, tcp_on_handshake};
  static const luaL_Reg fns[] = {{"on", tcp_on},       {"new", tcp_new},         {"connect", tcp_connect},
                                 {"read", tcp_read},   {"send", tcp_send},       {"keep_loop", tcp_keep_loop},
                                 {"close", tcp_close}, {"resolve", tcp_resolve}, {"alive", tcp_alive},
                                 {"tls", tcp_tls},     {"session", tcp_session}, {NULL, NULL}};
  tcp_L = L;
  net_tcp_init(loop, &cbs);
  bind_type_init(L, &sock_type, "socket");
  luaL_newmetatable(L, TLS_SESSION_MT);
  lua_pushcfunction(L, tls_session_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, "TLS session");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  bind_module_open(L, "moonfork.core.tcp", fns);
  lua_pushnumber(L, (lua_Number)cfg->resolver_ttl_ms);
  lua_setfield(L, -2, "resolver_ttl");
  lua_pop(L, 1);
}
