/* bind_pass.c -- moonfork.http.pass's C half as Lua sees it: `moonfork.core.pass`.
 *
 * pass.start hands a request to http_pass.c and returns at once; the calling coroutine then waits
 * (sched.wait), and the `done` callback registered with pass.on wakes it with the outcome. The
 * coroutine is pinned by a registry ref from start to done; nothing else crosses the boundary per
 * request (the request's packed headers go to C as the string the dispatcher already holds). A tunnel
 * (after an upstream's 101) is C's alone: the exchange is done once it begins. */
#include "bind_pass.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bind_http.h"
#include "bind_obj.h"
#include "http_parse.h"
#include "http_pass.h"
#include "luastate.h"

static struct {
  lua_State *L;
  int done_ref;
} bind_pass = {NULL, LUA_NOREF};

/* pass.on(done): done(co, status, err, sent) for every exchange that started. */
static int pass_on(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, bind_pass.done_ref);
  lua_pushvalue(L, 1);
  bind_pass.done_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static void pass_done(void *arg, int status, const char *err, int sent) {
  lua_State *L = bind_pass.L;
  int ref = (int)(intptr_t)arg;
  lua_rawgeti(L, LUA_REGISTRYINDEX, bind_pass.done_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (status) lua_pushinteger(L, status); else lua_pushnil(L);
  if (err) lua_pushstring(L, err); else lua_pushnil(L);
  lua_pushboolean(L, sent);
  luastate_pcall(L, 4, 0, "error in moonfork.http.pass's done callback");
}

/* The upstream: "unix:/path" or an address (IPv4 or IPv6, no name) and a port. 0, or raises. */
static void pass_upstream(lua_State *L, http_pass_upstream_t *up, struct sockaddr_storage *ss) {
  const char *addr = luaL_checkstring(L, 9);
  up->name = luaL_checkstring(L, 8);
  up->addr = NULL;
  up->path = NULL;
  if (strncmp(addr, "unix:", 5) == 0) {
    up->path = addr + 5;
    if (strlen(up->path) >= 108) luaL_argerror(L, 9, "socket path too long");
    return;
  }
  int port = (int)luaL_checkinteger(L, 10);
  /* the addresses last parsed (a handful of upstreams per worker): inet_pton once, not per request */
  static struct {
    char text[INET6_ADDRSTRLEN];
    int port;
    struct sockaddr_storage ss;
  } seen[8];
  static unsigned next;
  for (unsigned i = 0; i < 8; i++)
    if (seen[i].port == port && strcmp(seen[i].text, addr) == 0) {
      up->addr = (struct sockaddr *)&seen[i].ss;
      return;
    }
  if (uv_ip4_addr(addr, port, (struct sockaddr_in *)ss) != 0 && uv_ip6_addr(addr, port, (struct sockaddr_in6 *)ss) != 0)
    luaL_argerror(L, 9, "not an IP address");
  up->addr = (struct sockaddr *)ss;
  if (strlen(addr) < sizeof seen[0].text) {
    unsigned i = next++ % 8;
    snprintf(seen[i].text, sizeof seen[i].text, "%s", addr);
    seen[i].port = port;
    seen[i].ss = *ss;
  }
}

/* The client's Content-Length from its packed headers: the value, -1 when it sent none, -2 when it
 * sent none but a Transfer-Encoding. */
static double pass_clen(const char *h, size_t len) {
  size_t off = 0, nl, vl;
  const char *n, *v;
  double te = -1;
  while (http_headers_next(h, len, &off, &n, &nl, &v, &vl) == 1) {
    if (nl == 14 && strncasecmp(n, "content-length", 14) == 0) {
      char num[24];
      if (vl >= sizeof num) return -2;
      memcpy(num, v, vl);
      num[vl] = 0;
      return strtod(num, NULL);
    }
    if (nl == 17 && strncasecmp(n, "transfer-encoding", 17) == 0) te = -2;
  }
  return te;
}

static uint64_t pass_ms(lua_State *L, int i) {
  lua_Number n = luaL_optnumber(L, i, 0);
  return n > 0 && n < 1e15 ? (uint64_t)n : 0;
}

/* pass.start(conn, gen (nil: the connection's current request), co, method, target, head, body|false, name, addr, port, opts...) -> true |
 * nil, err. body: the whole body, or false when it is still arriving (framed upstream as the client
 * framed it: its Content-Length, else chunked), nil when there is none. max_body (11: the largest
 * response body, nil for any). Then pool_size (12), idle_ms,
 * connect_ms, send_ms, read_ms (16), extra header lines (17), names to drop (18), xff (19, boolean),
 * host (20: Host when the client sent none), tunnel_ms (21: a tunnel's idle time), http11 (22, boolean:
 * only an HTTP/1.1 request may ask for an upgrade, RFC 9110 7.8). A bodiless GET whose headers ask
 * for an upgrade asks the upstream for it too. */
static int pass_start(lua_State *L) {
  http_conn_t *c = bind_http_conn(L, 1);
  uint32_t gen = lua_isnil(L, 2) ? (c != NULL ? http_conn_gen(c) : 0) : (uint32_t)luaL_checknumber(L, 2);
  luaL_checktype(L, 3, LUA_TTHREAD);
  http_pass_req_t r = {.method = luaL_checkstring(L, 4)};
  r.target = luaL_checklstring(L, 5, &r.target_len);
  r.headers = luaL_checklstring(L, 6, &r.headers_len);
  size_t blen = 0;
  const char *body = lua_type(L, 7) == LUA_TSTRING ? lua_tolstring(L, 7, &blen) : NULL;
  http_pass_upstream_t up;
  struct sockaddr_storage ss;
  pass_upstream(L, &up, &ss);
  up.pool_size = (unsigned)pass_ms(L, 12);
  up.idle_ms = pass_ms(L, 13);
  up.connect_ms = pass_ms(L, 14);
  up.send_ms = pass_ms(L, 15);
  up.read_ms = pass_ms(L, 16);
  lua_Number max = luaL_optnumber(L, 11, -1);
  up.max_body = max >= 0 && max < 1.8e19 ? (uint64_t)max : UINT64_MAX;
  r.extra = luaL_optlstring(L, 17, NULL, &r.extra_len);
  r.drop = luaL_optstring(L, 18, NULL);
  r.host = luaL_optstring(L, 20, NULL);
  up.tunnel_ms = pass_ms(L, 21);
  if (c == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "client closed");
    return 2;
  }
  r.remote = lua_toboolean(L, 19) ? http_conn_remote(c) : NULL;
  if (body) { /* whole: its length (an empty one only when the client framed a body at all) */
    r.body = blen || pass_clen(r.headers, r.headers_len) != -1 ? HTTP_PASS_BODY_LENGTH : HTTP_PASS_BODY_NONE;
    r.body_len = blen;
  } else if (lua_type(L, 7) == LUA_TBOOLEAN) { /* still arriving: framed as the client framed it */
    double len = pass_clen(r.headers, r.headers_len);
    r.body = len >= 0 ? HTTP_PASS_BODY_LENGTH : HTTP_PASS_BODY_CHUNKED;
    r.body_len = len >= 0 ? (uint64_t)len : 0;
  }
  if (lua_toboolean(L, 22) && strcmp(r.method, "GET") == 0 && r.body_len == 0 && r.body != HTTP_PASS_BODY_CHUNKED)
    r.upgrade = http_pass_upgrade_of(r.headers, r.headers_len, &r.upgrade_len);
  lua_pushvalue(L, 3);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  const char *why;
  int rc = http_pass_start(c, gen, &r, body, blen, &up, (void *)(intptr_t)ref, &why);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* pass.drain(): the worker drains: its tunnels close, and no new one opens. */
static int pass_drain(lua_State *L) {
  (void)L;
  http_pass_drain();
  return 0;
}

void bind_pass_open(lua_State *L, uv_loop_t *loop) {
  static const luaL_Reg fns[] = {{"on", pass_on}, {"start", pass_start}, {"drain", pass_drain}, {NULL, NULL}};
  bind_pass.L = L;
  http_pass_init(loop, pass_done);
  bind_module_open(L, "moonfork.core.pass", fns);
  lua_pop(L, 1);
}
