/* bind_http.c -- requests into Lua and responses out of it: the bridge between http.c and moonfork.http.
 *
 * Lua sees a connection as a binding object (bind_obj.h) whose pointer is cleared when the
 * connection closes, so a handler that answers late finds it gone instead of touching freed memory.
 * Its target is the response the `request` callback returned: drain and close are called with it.
 * Each request carries a generation number: a response can only reach the request it was made for. The Lua half (lua/moonfork/http.lua) builds req/res and runs the handler in a coroutine. */
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

/* ---- response heads ------------------------------------------------------------------------- */

typedef struct {
  mf_buf_t out;  /* the header lines (reused between responses) */
  int64_t clen;  /* Content-Length the handler set, or -1 */
  int flags;     /* HTTP_RESP_* */
} head_t;

static head_t resp_head; /* the head being built (one response at a time: Lua runs on one thread) */

/* Header names are tokens (RFC 9110): letters, digits and !#$%&'*+-.^_`|~. token_lower[c] is the
 * lower-case form of a token byte, 0 for a byte that cannot be in a token. */
static unsigned char token_lower[256];

static void token_init(void) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  for (int ch = 1; ch < 256; ch++)
    if ((ch < 128 && isalnum(ch)) || strchr(extra, ch)) token_lower[ch] = (unsigned char)tolower(ch);
}

/* ch in lower case if it is a token byte, else as it is. */
static inline char lower_byte(unsigned char ch) { return (char)(token_lower[ch] ? token_lower[ch] : ch); }

static int is_token(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (token_lower[(unsigned char)s[i]] == 0) return 0;
  return 1;
}

/* What was wrong with the handler's head, for the Lua side to raise (core_send). */
static char head_error[256];

static int head_fail(const char *name, const char *what) {
  snprintf(head_error, sizeof head_error, "header %.100s: %s", name, what);
  return -1;
}

/* ctl_byte[c]: c may not appear in a header value (RFC 9110 §5.5: the control characters other than
 * HTAB, and DEL), which keeps CR, LF and NUL out, and with them response splitting. */
static unsigned char ctl_byte[256];

static void ctl_init(void) {
  for (int ch = 0; ch < 0x20; ch++) ctl_byte[ch] = ch != '\t';
  ctl_byte[0x7f] = 1;
}

/* One "name: value" line; the value is at stack index `v` (a string or a number). 0, or -1 with
 * head_error set. */
static int head_line(lua_State *L, const char *name, size_t nlen, int v) {
  size_t vlen;
  if (lua_type(L, v) != LUA_TSTRING && lua_type(L, v) != LUA_TNUMBER)
    return head_fail(name, "a value must be a string or a number");
  const char *value = lua_tolstring(L, v, &vlen);
  for (size_t i = 0; i < vlen; i++)
    if (ctl_byte[(unsigned char)value[i]]) return head_fail(name, "the value must not contain control characters (CR, LF, NUL...)");
  if (mf_buf_reserve(&resp_head.out, nlen + vlen + 4) != 0) luaL_error(L, "out of memory");
  char *p = resp_head.out.data + resp_head.out.len;
  memcpy(p, name, nlen);
  p[nlen] = ':';
  p[nlen + 1] = ' ';
  memcpy(p + nlen + 2, value, vlen);
  p[nlen + 2 + vlen] = '\r';
  p[nlen + 3 + vlen] = '\n';
  resp_head.out.len += nlen + vlen + 4;
  return 0;
}

/* The header `name` with the value at index v (a string, a number, or an array of them). 0, or -1
 * with head_error set. */
static int head_header(lua_State *L, const char *name, size_t nlen, int v) {
  if (!is_token(name, nlen)) {
    snprintf(head_error, sizeof head_error, "bad header name '%.100s'", name);
    return -1;
  }
  switch (http_respond_header_role(name, nlen)) { /* which header wins: see http_respond.c */
    case HTTP_HEADER_FRAMING:
      return 0;
    case HTTP_HEADER_CONNECTION: {
      const char *val = lua_tostring(L, v);
      if (val && strcasecmp(val, "close") == 0) resp_head.flags |= HTTP_RESP_CLOSE;
      return 0;
    }
    case HTTP_HEADER_LENGTH: {
      lua_Number n = lua_tonumber(L, v);
      if (lua_type(L, v) == LUA_TTABLE || n < 0 || n != (lua_Number)(int64_t)n ||
          (n == 0 && !(lua_type(L, v) == LUA_TNUMBER || strcmp(lua_tostring(L, v), "0") == 0)))
        return head_fail("Content-Length", "not a length");
      resp_head.clen = (int64_t)n;
      break;
    }
    default:
      break;
  }
  if (lua_type(L, v) == LUA_TTABLE) {
    int n = (int)lua_objlen(L, v);
    for (int i = 1; i <= n; i++) {
      lua_rawgeti(L, v, i);
      if (head_line(L, name, nlen, lua_gettop(L)) != 0) return -1;
      lua_pop(L, 1);
    }
    return 0;
  }
  return head_line(L, name, nlen, v);
}

/* Builds the head from the handler's tables: `h` (lower-case name -> value or false) with `names`
 * (lower-case -> the name as written) first, then `user` (writeHead's table) minus what `h` holds.
 * 0, or -1 with head_error set (the stack is left as it is: the caller returns). */
static int head_build(lua_State *L, int user, int h, int names) {
  resp_head.out.len = 0;
  resp_head.clen = -1;
  resp_head.flags = 0;
  if (lua_istable(L, h)) {
    lua_pushnil(L);
    while (lua_next(L, h) != 0) {
      if (lua_toboolean(L, -1) && lua_type(L, -2) == LUA_TSTRING) {
        size_t nlen;
        lua_pushvalue(L, -2);
        lua_rawget(L, names);
        const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &nlen) : lua_tolstring(L, -3, &nlen);
        if (head_header(L, name, nlen, lua_gettop(L) - 1) != 0) return -1;
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    }
  }
  if (lua_istable(L, user)) {
    char low[128];
    lua_pushnil(L);
    while (lua_next(L, user) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING) {
        snprintf(head_error, sizeof head_error, "header names must be strings");
        return -1;
      }
      size_t nlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      int shadowed = 0;
      if (lua_istable(L, h) && nlen < sizeof low) {
        for (size_t i = 0; i < nlen; i++) low[i] = lower_byte((unsigned char)name[i]);
        lua_pushlstring(L, low, nlen);
        lua_rawget(L, h);
        shadowed = !lua_isnil(L, -1);
        lua_pop(L, 1);
      }
      if (!shadowed && head_header(L, name, nlen, lua_gettop(L)) != 0) return -1;
      lua_pop(L, 1);
    }
  }
  return 0;
}

/* The status at index i, when it is a final status (a whole number from 200 to 599: 1xx are interim
 * answers the client waits past, and 600-999 mean nothing); 0 otherwise, with head_error set. */
static int final_status(lua_State *L, int i) {
  lua_Number n = lua_tonumber(L, i);
  if (n >= 200 && n <= 599 && n == (lua_Number)(int)n) return (int)n;
  lua_pushvalue(L, i);
  const char *s = lua_tostring(L, -1);
  snprintf(head_error, sizeof head_error, "res.statusCode %.40s is not a final status (a whole number from 200 to 599)",
           s ? s : luaL_typename(L, i));
  lua_pop(L, 1);
  return 0;
}

/* http.send(conn, gen (nil: the current request), status, user, h, names, body, final) -> true | false (slow down) |
 * nil, "ECLOSED: ..." | nil, message, true (the head was unusable: the client got a 500 instead, and
 * the Lua side raises the message). status (nil once the head went out) and the tables matter on the
 * first call of a response only. */
static int core_send(lua_State *L) {
  http_conn_t *c = check_conn(L);
  uint32_t gen = check_gen(L, c);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 7, "", &blen);
  int final = lua_toboolean(L, 8);
  if (c == NULL) return bind_push_closed(L, &conn_type);
  int r;
  if (!lua_isnil(L, 3)) {
    int status = final_status(L, 3);
    if (status == 0 || head_build(L, 4, 5, 6) != 0) {
      http_conn_abort(c, gen); /* a 500 now, not a 503 at --request-timeout */
      lua_pushnil(L);
      lua_pushstring(L, head_error);
      lua_pushboolean(L, 1);
      return 3;
    }
    r = http_conn_respond(c, gen, status, resp_head.out.data ? resp_head.out.data : "", resp_head.out.len, body, blen, final, resp_head.clen,
                          resp_head.flags);
  } else {
    r = http_conn_respond(c, gen, 200, "", 0, body, blen, final, -1, 0); /* the head went out before */
  }
  if (r < 0) return bind_push_closed(L, &conn_type);
  lua_pushboolean(L, r);
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
  token_init();
  ctl_init();
  static const luaL_Reg fns[] = {{"on", http_on},         {"send", core_send},       {"abort", core_abort},
                                 {"remote", core_remote}, {"headers", core_headers},
                                 {"read", core_read},     {"gen", core_gen},         {NULL, NULL}};
  bind_type_init(L, &conn_type, "connection");
  bind_module_open(L, "moonfork.core.http", fns);
  lua_pop(L, 1);
}

/* Pushes the connection's binding object, making it on first use. The connection's slot holds the
 * object's self_ref while Lua knows the connection, LUA_NOREF (MF_NO_REF) before and after. */
static bind_obj_t *push_conn(lua_State *L, http_conn_t *c) {
  int *ref = http_conn_user_ref(c);
  if (*ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
    return lua_touserdata(L, -1);
  }
  bind_obj_t *obj = bind_obj_new(L, &conn_type, c);
  *ref = obj->self_ref;
  return obj;
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
    for (size_t k = 0; k < n; k++) name[k] = lower_byte((unsigned char)p[k]);
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
  bind_obj_t *obj = push_conn(L, c);
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
  /* res.conn keeps obj alive across the call, even if the connection closed during it */
  if (luastate_pcall(L, 8, 1, "internal error dispatching a request") != 0) return -1;
  if (obj->ptr) bind_obj_set_target(L, obj, -1); /* the response C calls back with */
  lua_pop(L, 1);
  return 0;
}

/* The connection is gone: its object is invalidated; close(res) when a response was in flight. */
void bind_http_on_conn_closed(void *data, http_conn_t *c, int in_flight) {
  http_pass_on_conn_closed(c); /* a pass relaying for it stops */
  int *ref = http_conn_user_ref(c);
  if (*ref == LUA_NOREF) return;
  bind_obj_closed(data, ref, http_refs[CB_CLOSE], in_flight, "error in close handler");
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
  int *ref = http_conn_user_ref(c);
  if (*ref == LUA_NOREF || !bind_push_call(L, http_refs[CB_DRAIN], bind_obj_at(L, *ref))) return;
  luastate_pcall(L, 1, 0, "error in drain handler");
}

/* A body still arriving has news for its handler: body(res, ended, trailers). */
void bind_http_on_body(void *data, http_conn_t *c, int end, const char *trailers, size_t trailers_len) {
  lua_State *L = data;
  if (http_pass_on_body(c)) return; /* a pass is relaying its body */
  int *ref = http_conn_user_ref(c);
  if (*ref == LUA_NOREF || !bind_push_call(L, http_refs[CB_BODY], bind_obj_at(L, *ref))) return;
  lua_pushboolean(L, end);
  if (trailers_len > 0)
    lua_pushlstring(L, trailers, trailers_len);
  else
    lua_pushnil(L);
  luastate_pcall(L, 3, 0, "error in body handler");
}
