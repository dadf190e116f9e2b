/* bind_httpc.c -- the HTTP client's response parser as Lua sees it: `moonfork.core.httpc`.
 *
 * lua/moonfork/http_client.lua reads from a cosocket (so pools, timeouts and TLS are socket.lua's) and
 * feeds what arrives here, one call per read: the call answers with the body bytes of that read as one
 * string, and says when the head is complete; the head then comes as a table in one call (lower-case
 * names, a repeated header as a list). No Lua code runs per byte, per header line or per chunk.
 *
 * A parser is a binding object (bind_obj.h) whose C memory lives in the userdata itself: nothing on
 * the C side ever calls back with it, so it is not pinned, and a parser a script drops (a handler that
 * fails mid-response) is freed by __gc like any value. Misuse raises; a refused response returns
 * nil, "malformed response: ..." and friends (httpc_parse_error). */
#include "bind_httpc.h"

#include <ctype.h>
#include <lauxlib.h>

#include "bind_obj.h"
#include "httpc_parse.h"

typedef struct {
  bind_obj_t obj; /* first: bind_obj_check sees a binding object */
  httpc_parse_t c;
} httpc_ud_t;

static bind_type_t httpc_type;

static httpc_parse_t *httpc_arg(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &httpc_type);
  if (obj->ptr == NULL) luaL_argerror(L, 1, "the parser is freed");
  return obj->ptr;
}

/* httpc.parser() -> p */
static int httpc_parser(lua_State *L) {
  httpc_ud_t *u = lua_newuserdata(L, sizeof *u);
  u->obj.ptr = &u->c;
  u->obj.self_ref = LUA_NOREF; /* not pinned: see the top of this file */
  u->obj.obj_ref = LUA_NOREF;
  httpc_parse_init(&u->c);
  lua_rawgeti(L, LUA_REGISTRYINDEX, httpc_type.mt_ref);
  lua_setmetatable(L, -2);
  return 1;
}

static int httpc_gc(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &httpc_type);
  if (obj->ptr) httpc_parse_free(obj->ptr);
  obj->ptr = NULL;
  return 0;
}

/* httpc.start(p, no_body, max_body, whole): a new response is expected. */
static int httpc_start(lua_State *L) {
  httpc_parse_t *c = httpc_arg(L);
  lua_Number max = luaL_optnumber(L, 3, -1);
  uint64_t limit = max >= 0 && max < 1.8e19 ? (uint64_t)max : UINT64_MAX; /* (none: nil, NaN, huge) */
  httpc_parse_start(c, lua_toboolean(L, 2), limit, lua_toboolean(L, 4));
  return 0;
}

static int httpc_fail(lua_State *L, const httpc_parse_t *c) {
  char err[256];
  lua_pushnil(L);
  lua_pushstring(L, httpc_parse_error(c, err, sizeof err));
  return 2;
}

/* Pushes the body bytes ready to hand out, or nil. When they are the whole of the string at `fed`
 * (a read that is all body, the common case of a large response), that string goes back as it is. */
static void httpc_push_body(lua_State *L, const httpc_parse_t *c, int fed) {
  size_t n, flen = 0;
  const char *at = httpc_parse_body(c, &n);
  const char *f = fed ? lua_tolstring(L, fed, &flen) : NULL;
  if (n && at == f && n == flen)
    lua_pushvalue(L, fed);
  else if (n)
    lua_pushlstring(L, at, n);
  else
    lua_pushnil(L);
}

/* httpc.feed(p, data) -> state, body | nil, headed, used | nil, err. state: 0 more to come, 1 the
 * response is complete, 2 it switches protocols; headed: the head is complete; used: bytes taken. */
static int httpc_feed(lua_State *L) {
  httpc_parse_t *c = httpc_arg(L);
  size_t len, used;
  const char *data = luaL_checklstring(L, 2, &len);
  int r = httpc_parse_feed(c, data, len, &used);
  if (r == HTTP_PARSE_ERROR) return httpc_fail(L, c);
  lua_pushinteger(L, r == HTTP_PARSE_MORE ? 0 : r == HTTP_PARSE_DONE ? 1 : 2);
  httpc_push_body(L, c, 2);
  lua_pushboolean(L, c->headed);
  lua_pushinteger(L, (lua_Integer)used);
  return 4;
}

/* httpc.finish(p) -> state, body | nil, err: the peer closed. state 1: the body ended there. */
static int httpc_finish(lua_State *L) {
  httpc_parse_t *c = httpc_arg(L);
  int r = httpc_parse_finish(c);
  if (r != HTTP_PARSE_DONE) {
    lua_pushnil(L);
    lua_pushstring(L, "closed");
    return 2;
  }
  lua_pushinteger(L, 1);
  httpc_push_body(L, c, 0);
  return 2;
}

/* Pushes a table of the packed header block: lower-case name -> value, or a list of the values (in
 * order) when the name repeats. */
static void httpc_push_fields(lua_State *L, const char *block, size_t len) {
  size_t off = 0, nlen, vlen;
  const char *name, *value;
  char lower[256];
  lua_createtable(L, 0, 8);
  while (http_headers_next(block, len, &off, &name, &nlen, &value, &vlen) == 1) {
    if (nlen <= sizeof lower) {
      for (size_t i = 0; i < nlen; i++) lower[i] = (char)tolower((unsigned char)name[i]);
      lua_pushlstring(L, lower, nlen);
    } else {
      luaL_Buffer b; /* a long name: rare enough to go through Lua's buffer */
      luaL_buffinit(L, &b);
      for (size_t i = 0; i < nlen; i++) luaL_addchar(&b, (char)tolower((unsigned char)name[i]));
      luaL_pushresult(&b);
    }
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    int t = lua_type(L, -1);
    if (t == LUA_TNIL) { /* the first: name -> value */
      lua_pop(L, 1);
      lua_pushlstring(L, value, vlen);
      lua_rawset(L, -3);
    } else if (t == LUA_TSTRING) { /* the second: name -> { first, second } */
      lua_createtable(L, 4, 0);
      lua_insert(L, -2);
      lua_rawseti(L, -2, 1);
      lua_pushlstring(L, value, vlen);
      lua_rawseti(L, -2, 2);
      lua_rawset(L, -3);
    } else { /* more: appended */
      lua_pushlstring(L, value, vlen);
      lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
      lua_pop(L, 2);
    }
  }
}

/* httpc.head(p) -> status, reason, headers, keep_alive, http_minor (once feed said headed) */
static int httpc_head(lua_State *L) {
  httpc_parse_t *c = httpc_arg(L);
  if (!c->headed) return 0;
  size_t len;
  const char *reason = http_parse_url(&c->parse, &len);
  lua_pushinteger(L, http_parse_status(&c->parse));
  lua_pushlstring(L, reason, len);
  const char *block = http_parse_headers(&c->parse, &len);
  httpc_push_fields(L, block, len);
  lua_pushboolean(L, http_parse_keep_alive(&c->parse));
  lua_pushinteger(L, c->parse.llhttp.http_minor);
  return 5;
}

/* httpc.trailers(p) -> the trailer fields of a complete chunked response, as head's headers */
static int httpc_trailers(lua_State *L) {
  httpc_parse_t *c = httpc_arg(L);
  size_t len;
  const char *block = http_parse_trailers(&c->parse, &len);
  if (len == 0) return 0;
  httpc_push_fields(L, block, len);
  return 1;
}

void bind_httpc_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"parser", httpc_parser}, {"start", httpc_start}, {"feed", httpc_feed},
                                 {"finish", httpc_finish}, {"head", httpc_head},   {"trailers", httpc_trailers},
                                 {NULL, NULL}};
  bind_type_init(L, &httpc_type, "HTTP response parser");
  lua_rawgeti(L, LUA_REGISTRYINDEX, httpc_type.mt_ref);
  lua_pushcfunction(L, httpc_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  bind_module_open(L, "moonfork.core.httpc", fns);
  lua_pop(L, 1);
}
