/* bind_res.c -- the `res` a handler gets: one small userdata that is also the connection's binding
 * object, and the response heads it sends.
 *
 * An open response a script keeps (an SSE stream, a long poll) costs what Lua keeps for it, so the
 * `res` is not a table of fields plus a binding object: it is one userdata of 16 bytes of payload
 * (a 64-byte LuaJIT allocation) holding the connection, the registry slot that pins it while its
 * response is in flight, the status and a few flags (headersSent, finished, a write said "slow down").
 * What most responses never set lives in its environment table (the slot every LuaJIT userdata has):
 * writeHead's headers table as it is, or, once anything else is set (setHeader's tables, listeners, a
 * body still arriving, a field of the script's own, a statusCode that is not a whole number), a side
 * table holding those and writeHead's table. writeHead, write and finish are C functions, so the hot
 * path reads no field through a metamethod; the rest of the methods are Lua (lua/moonfork/http.lua),
 * reading fields through res_get/res_set (__index/__newindex). When the response ends (or its
 * connection closes) the connection pointer is cleared and the pin dropped: the res cannot reach a later
 * request on the same connection, and is garbage unless the script keeps it. */
#include "bind_res.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_chan.h"
#include "luastate.h"
#include "util.h"

enum {
  RES_SENT = 1,        /* headersSent */
  RES_DONE = 2,        /* finished */
  RES_FULL = 4,        /* a write said "slow down" (_full): res:drain() may wait */
  RES_ENV_USER = 8,    /* the environment is writeHead's headers table (_user) */
  RES_ENV_SIDE = 16,   /* the environment is the side table */
  RES_STATUS_SIDE = 32 /* statusCode is in the side table (not a whole number from 0 to 65535) */
};

_Static_assert(offsetof(bind_res_t, conn) == offsetof(bind_obj_t, ptr), "bind_obj_check reads a res's connection");
_Static_assert(sizeof(bind_res_t) == 16, "a res is a 64-byte LuaJIT allocation");

static bind_type_t *res_type;
enum { RCB_CLOSED, RCB_MERGE, RCB_COUNT };
static const char *const res_names[RCB_COUNT] = {"closed", "merge"};
static int res_refs[RCB_COUNT] = {LUA_NOREF, LUA_NOREF};

static bind_res_t *res_check(lua_State *L) { return (bind_res_t *)bind_obj_check(L, 1, res_type); }

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

/* What was wrong with the handler's head, raised at the handler by res_out. */
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


/* ---- the res's fields ---------------------------------------------------------------------- */

enum { K_OTHER, K_FINISHED, K_SENT, K_STATUS, K_CONN, K_FULL, K_USER };

static int res_key(lua_State *L, int idx) {
  size_t n;
  if (lua_type(L, idx) != LUA_TSTRING) return K_OTHER;
  const char *k = lua_tolstring(L, idx, &n);
  switch (n) {
    case 8: return memcmp(k, "finished", 8) == 0 ? K_FINISHED : K_OTHER;
    case 11: return memcmp(k, "headersSent", 11) == 0 ? K_SENT : K_OTHER;
    case 10: return memcmp(k, "statusCode", 10) == 0 ? K_STATUS : K_OTHER;
    case 5:
      if (memcmp(k, "_conn", 5) == 0) return K_CONN;
      if (memcmp(k, "_full", 5) == 0) return K_FULL;
      return memcmp(k, "_user", 5) == 0 ? K_USER : K_OTHER;
    default: return K_OTHER;
  }
}

/* Pushes the side table's `key` (nil when the res has none). */
static void side_get(lua_State *L, const bind_res_t *r, const char *key) {
  if (!(r->flags & RES_ENV_SIDE)) {
    lua_pushnil(L);
    return;
  }
  lua_getfenv(L, 1);
  lua_getfield(L, -1, key);
  lua_remove(L, -2);
}

/* Pushes the side table, making it on first use (writeHead's table moves into it as _user). */
static void side_push(lua_State *L, bind_res_t *r) {
  if (r->flags & RES_ENV_SIDE) {
    lua_getfenv(L, 1);
    return;
  }
  lua_createtable(L, 0, 2);
  if (r->flags & RES_ENV_USER) {
    lua_getfenv(L, 1);
    lua_setfield(L, -2, "_user");
  }
  lua_pushvalue(L, -1);
  lua_setfenv(L, 1);
  r->flags = (uint16_t)((r->flags & ~RES_ENV_USER) | RES_ENV_SIDE);
}

/* Sets writeHead's headers table (the value at v, or none for a value that is not a table). */
static void user_set(lua_State *L, bind_res_t *r, int v) {
  if (r->flags & RES_ENV_SIDE) {
    lua_getfenv(L, 1);
    lua_pushvalue(L, v);
    lua_setfield(L, -2, "_user");
    lua_pop(L, 1);
  } else if (lua_istable(L, v)) {
    lua_pushvalue(L, v);
    lua_setfenv(L, 1);
    r->flags |= RES_ENV_USER;
  } else if (r->flags & RES_ENV_USER) {
    lua_pushvalue(L, LUA_GLOBALSINDEX); /* (a userdata's environment is always some table) */
    lua_setfenv(L, 1);
    r->flags &= (uint16_t)~RES_ENV_USER;
  }
}

static void user_push(lua_State *L, bind_res_t *r) {
  if (r->flags & RES_ENV_USER)
    lua_getfenv(L, 1);
  else
    side_get(L, r, "_user");
}

static void flag_set(bind_res_t *r, int flag, int on) {
  r->flags = (uint16_t)(on ? r->flags | flag : r->flags & ~flag);
}

/* res_get(res, key): what res.key reads when it is not a method (http.lua's __index). */
static int res_get(lua_State *L) {
  bind_res_t *r = res_check(L);
  switch (res_key(L, 2)) {
    case K_FINISHED: lua_pushboolean(L, r->flags & RES_DONE); return 1;
    case K_SENT: lua_pushboolean(L, r->flags & RES_SENT); return 1;
    case K_FULL: lua_pushboolean(L, r->flags & RES_FULL); return 1;
    case K_CONN: lua_pushvalue(L, 1); return 1; /* the res is its connection's binding object */
    case K_USER: user_push(L, r); return 1;
    case K_STATUS:
      if (r->flags & RES_STATUS_SIDE)
        side_get(L, r, "statusCode");
      else
        lua_pushinteger(L, r->status);
      return 1;
    default:
      if (!(r->flags & RES_ENV_SIDE)) return 0;
      lua_getfenv(L, 1);
      lua_pushvalue(L, 2);
      lua_rawget(L, -2);
      return 1;
  }
}

/* statusCode = the value at 3: a whole number from 0 to 65535 in the payload, anything else (checked
 * when the head goes out) in the side table; nil is the default, 200. */
static void status_set(lua_State *L, bind_res_t *r) {
  lua_Number n = lua_tonumber(L, 3);
  if (lua_isnil(L, 3) || (lua_type(L, 3) == LUA_TNUMBER && n >= 0 && n <= 65535 && n == (lua_Number)(int)n)) {
    r->status = lua_isnil(L, 3) ? 200 : (uint16_t)n;
    r->flags &= (uint16_t)~RES_STATUS_SIDE;
    return;
  }
  side_push(L, r);
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "statusCode");
  lua_pop(L, 1);
  r->flags |= RES_STATUS_SIDE;
}

/* res_set(res, key, value): res.key = value (http.lua's __newindex). */
static int res_set(lua_State *L) {
  bind_res_t *r = res_check(L);
  switch (res_key(L, 2)) {
    case K_FINISHED: flag_set(r, RES_DONE, lua_toboolean(L, 3)); return 0;
    case K_SENT: flag_set(r, RES_SENT, lua_toboolean(L, 3)); return 0;
    case K_FULL: flag_set(r, RES_FULL, lua_toboolean(L, 3)); return 0;
    case K_USER: user_set(L, r, 3); return 0;
    case K_STATUS: status_set(L, r); return 0;
    case K_CONN: return luaL_error(L, "res._conn cannot be set");
    default:
      if (lua_isnil(L, 2)) return luaL_error(L, "res: a field name cannot be nil");
      side_push(L, r);
      lua_pushvalue(L, 2);
      lua_pushvalue(L, 3);
      lua_rawset(L, -3);
      return 0;
  }
}

/* ---- writeHead, write, finish ---------------------------------------------------------------- */

/* The response is over (finished, failed, or its client left): http.lua's closed(res) runs its
 * "close" listeners and wakes its waiters, when it may have any. */
static void res_closed(lua_State *L, const bind_res_t *r) {
  if (!(r->flags & (RES_ENV_SIDE | RES_FULL)) || res_refs[RCB_CLOSED] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, res_refs[RCB_CLOSED]);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
}

/* res:writeHead(status[, headers]) -> res */
static int res_write_head(lua_State *L) {
  bind_res_t *r = res_check(L);
  if (r->flags & RES_SENT) return luaL_error(L, "res:writeHead(): the headers were already sent");
  lua_Number n = lua_tonumber(L, 2);
  if (!(n >= 200 && n <= 599 && n == (lua_Number)(int)n))
    return luaL_error(L, "res:writeHead(): status must be a final status, a whole number from 200 to 599");
  r->status = (uint16_t)n;
  r->flags &= (uint16_t)~RES_STATUS_SIDE;
  if (!lua_isnoneornil(L, 3)) {
    if (!lua_istable(L, 3)) return luaL_error(L, "res:writeHead(): headers must be a table");
    int merge = (r->flags & RES_ENV_USER) != 0;
    if (!merge && (r->flags & RES_ENV_SIDE)) {
      side_get(L, r, "_user");
      side_get(L, r, "_h");
      merge = lua_toboolean(L, -1) || lua_toboolean(L, -2);
      lua_pop(L, 2);
    }
    if (merge) { /* writeHead's values win, as in Node (http.lua: setHeader for each) */
      lua_rawgeti(L, LUA_REGISTRYINDEX, res_refs[RCB_MERGE]);
      lua_pushvalue(L, 1);
      lua_pushvalue(L, 3);
      lua_call(L, 2, 0);
    } else {
      user_set(L, r, 3);
    }
  }
  lua_settop(L, 1);
  return 1;
}

/* The body argument (at 2) of res:write / res:finish: a string, a number, or nothing. */
static const char *body_arg(lua_State *L, size_t *len, const char *fname) {
  int t = lua_type(L, 2);
  if (t == LUA_TNONE || t == LUA_TNIL) {
    *len = 0;
    return "";
  }
  if (t != LUA_TSTRING && t != LUA_TNUMBER) luaL_error(L, "res:%s(): the body must be a string", fname);
  return lua_tolstring(L, 2, len);
}

/* Sends a piece of the response (the head first, on the first call): 1 sent, 0 slow down, < 0 the
 * connection is gone. A head that cannot be sent gets the client a 500 at once, ends the response and
 * raises (at the handler that called write or finish). */
static int res_out(lua_State *L, bind_res_t *r, const char *body, size_t blen, int final) {
  http_conn_t *c = r->conn;
  if (c == NULL) {
    r->flags |= RES_SENT;
    return UV_EPIPE;
  }
  uint32_t gen = http_conn_gen(c);
  if (r->flags & RES_SENT) return http_conn_respond(c, gen, 200, "", 0, body, blen, final, -1, 0);
  r->flags |= RES_SENT;
  int top = lua_gettop(L);
  if (r->flags & RES_STATUS_SIDE)
    side_get(L, r, "statusCode");
  else
    lua_pushinteger(L, r->status);
  user_push(L, r);
  side_get(L, r, "_h");
  side_get(L, r, "_names");
  int status = final_status(L, top + 1);
  if (status == 0 || head_build(L, top + 2, top + 3, top + 4) != 0) {
    http_conn_abort(c, gen); /* a 500 now, not a 503 at --request-timeout */
    r->flags |= RES_DONE;
    res_closed(L, r);
    return luaL_error(L, "%s", head_error);
  }
  lua_settop(L, top);
  return http_conn_respond(c, gen, status, resp_head.out.data ? resp_head.out.data : "", resp_head.out.len, body,
                           blen, final, resp_head.clen, resp_head.flags);
}

/* res:write(chunk) -> true | false (the client is slow: wait for "drain") | nil (the client is gone) */
static int res_write(lua_State *L) {
  bind_res_t *r = res_check(L);
  if (r->flags & RES_DONE) {
    lua_pushnil(L);
    return 1;
  }
  size_t blen;
  const char *body = body_arg(L, &blen, "write");
  int rc = res_out(L, r, body, blen, 0);
  if (rc < 0) {
    r->flags |= RES_DONE;
    res_closed(L, r);
    lua_pushnil(L);
    return 1;
  }
  if (rc == 0) r->flags |= RES_FULL;
  lua_pushboolean(L, rc);
  return 1;
}

/* res:finish([chunk]) -> true, or false when the client was gone (nil when it had finished before) */
static int res_finish(lua_State *L) {
  bind_res_t *r = res_check(L);
  if (r->flags & RES_DONE) {
    lua_pushnil(L);
    return 1;
  }
  size_t blen;
  const char *body = body_arg(L, &blen, "finish");
  r->flags |= RES_DONE;
  int rc = res_out(L, r, body, blen, 1);
  res_closed(L, r);
  lua_pushboolean(L, rc >= 0);
  return 1;
}

/* The channel name argument (at 2) of res:subscribe / res:unsubscribe / http.publish. */
static const char *chan_arg(lua_State *L, int i, size_t *n, const char *fname) {
  if (lua_type(L, i) != LUA_TSTRING) luaL_error(L, "%s: the channel name must be a string", fname);
  const char *name = lua_tolstring(L, i, n);
  if (*n == 0) luaL_error(L, "%s: the channel name must not be empty", fname);
  return name;
}

/* res:subscribe(name) -> true (false when a member already); raises when the response cannot be one. */
static int res_subscribe(lua_State *L) {
  bind_res_t *r = res_check(L);
  size_t n;
  const char *name = chan_arg(L, 2, &n, "res:subscribe(name)");
  if (r->flags & RES_DONE || r->conn == NULL)
    return luaL_error(L, "res:subscribe(): the response has ended");
  int rc = http_chan_join(r->conn, http_conn_gen(r->conn), name, n);
  if (rc == UV_EINVAL)
    return luaL_error(L, "res:subscribe(): the response must be an open stream whose head was sent (write "
                         "something first; no Content-Length, no HEAD, 204 or 304)");
  if (rc == UV_EPIPE) return luaL_error(L, "res:subscribe(): the response has ended");
  if (rc < 0) return luaL_error(L, "res:subscribe(): out of memory");
  lua_pushboolean(L, rc);
  return 1;
}

/* res:unsubscribe(name) -> true, or false when it was not a member */
static int res_unsubscribe(lua_State *L) {
  bind_res_t *r = res_check(L);
  size_t n;
  const char *name = chan_arg(L, 2, &n, "res:unsubscribe(name)");
  lua_pushboolean(L, r->conn ? http_chan_leave(r->conn, name, n) : 0);
  return 1;
}

/* http.publish(name, data) -> the members of this worker it was written to */
static int res_publish(lua_State *L) {
  size_t n, len;
  const char *name = chan_arg(L, 1, &n, "http.publish(name, data)");
  if (lua_type(L, 2) != LUA_TSTRING) return luaL_error(L, "http.publish(name, data): data must be a string");
  const char *p = lua_tolstring(L, 2, &len);
  lua_pushnumber(L, (lua_Number)http_chan_publish(name, n, p, len));
  return 1;
}

/* http.subscribers(name) -> the members of the channel in this worker */
static int res_subscribers(lua_State *L) {
  size_t n;
  const char *name = chan_arg(L, 1, &n, "http.subscribers(name)");
  lua_pushnumber(L, (lua_Number)http_chan_count(name, n));
  return 1;
}

/* http.res_on{ closed = fn(res), merge = fn(res, headers) }: http.lua's half of the res. */
static int res_on(lua_State *L) {
  bind_callbacks_set(L, 1, res_names, res_refs, RCB_COUNT);
  return 0;
}

/* ---- the res and its connection -------------------------------------------------------------- */

void bind_res_open(lua_State *L, bind_type_t *type) {
  token_init();
  ctl_init();
  res_type = type;
  static const luaL_Reg fns[] = {{"res_get", res_get},     {"res_set", res_set},   {"res_on", res_on},
                                 {"writeHead", res_write_head}, {"write", res_write}, {"finish", res_finish},
                                 {"subscribe", res_subscribe}, {"unsubscribe", res_unsubscribe},
                                 {"publish", res_publish}, {"subscribers", res_subscribers}, {NULL, NULL}};
  luaL_register(L, NULL, fns);
  lua_rawgeti(L, LUA_REGISTRYINDEX, type->mt_ref);
  lua_setfield(L, -2, "res_mt"); /* http.lua fills it: __index, __newindex */
}

bind_res_t *bind_res_new(lua_State *L, http_conn_t *c) {
  int *ref = http_conn_user_ref(c);
  if (*ref != LUA_NOREF) bind_res_closed(L, c, 0, LUA_NOREF); /* (a response is over before the next starts) */
  bind_res_t *r = lua_newuserdata(L, sizeof *r);
  r->conn = c;
  r->status = 200;
  r->flags = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, res_type->mt_ref);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  r->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  *ref = r->self_ref;
  return r;
}

bind_res_t *bind_res_push(lua_State *L, http_conn_t *c) {
  int ref = *http_conn_user_ref(c);
  if (ref == LUA_NOREF) return NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  return lua_touserdata(L, -1);
}

void bind_res_closed(lua_State *L, http_conn_t *c, int in_flight, int cb_ref) {
  bind_res_t *r = bind_res_push(L, c);
  if (r == NULL) return;
  *http_conn_user_ref(c) = LUA_NOREF;
  r->conn = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, r->self_ref);
  r->self_ref = LUA_NOREF;
  if (in_flight)
    bind_call(L, cb_ref, 1, "error in close handler");
  else
    lua_pop(L, 1);
}
