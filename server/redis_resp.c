/* redis_resp.c -- Redis replies (RESP2) to Lua values, and commands to RESP: a pure codec, no loop.
 *
 * Parsing is hiredis's redisReader with our own reply-object functions, which build the Lua values
 * directly: no redisReply tree is allocated and then converted. hiredis reads an array depth first,
 * tells each element its parent task and its index, and may stop mid-reply when the bytes run out and
 * go on at the next feed. So the arrays still open live in a Lua table of their own (registry ref):
 * [d] is the open array at depth d, [0] the reply; each new element is stored into [depth - 1] at
 * once. hiredis bounds the nesting (7 levels, then a protocol error) and we bound what one reply may
 * buffer, so hostile replies cost neither the C stack nor unbounded memory. The "objects" handed back
 * to hiredis are only non-NULL markers; the values belong to Lua.
 *
 * Commands are formatted by hiredis's redisFormatCommandArgv (binary-safe bulk strings). */
#include "redis_resp.h"

#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define RESP_PREALLOC_MAX 1024 /* a declared array length preallocates no more than this */

struct redis_resp_s {
  redisReader *reader;
  lua_State *L;  /* during redis_resp_next */
  int open_ref;  /* registry ref of the table of open arrays: [d] = the array at depth d, [0] = the reply */
  int top_err;   /* the reply is an error */
  size_t max_pending;
};

static char resp_marker;
#define RESP_OBJ ((void *)&resp_marker)

static int resp_depth(const redisReadTask *task) {
  int d = 0;
  for (const redisReadTask *t = task->parent; t; t = t->parent) d++;
  return d;
}

/* The value on the stack top is the element `task` (popped): the reply itself, or stored in its
 * parent array; an array is also recorded as the open array of its depth. */
static void *resp_place(redis_resp_t *r, const redisReadTask *task, int is_array) {
  lua_State *L = r->L;
  int d = resp_depth(task);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->open_ref);
  lua_insert(L, -2); /* open, value */
  if (is_array && d > 0) {
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, d);
  }
  if (d == 0) {
    lua_rawseti(L, -2, 0);
  } else {
    lua_rawgeti(L, -2, d - 1); /* open, value, parent */
    lua_insert(L, -2);
    lua_rawseti(L, -2, task->idx + 1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return RESP_OBJ;
}

static void *resp_string(const redisReadTask *task, char *s, size_t len) {
  redis_resp_t *r = task->privdata;
  lua_State *L = r->L;
  if (task->type != REDIS_REPLY_ERROR) {
    lua_pushlstring(L, s, len);
  } else if (task->parent == NULL) {
    lua_pushlstring(L, s, len);
    r->top_err = 1;
  } else { /* an error inside an array (EXEC): { false, "ERR ..." } */
    lua_createtable(L, 2, 0);
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, s, len);
    lua_rawseti(L, -2, 2);
  }
  return resp_place(r, task, 0);
}

static void *resp_array(const redisReadTask *task, int n) {
  redis_resp_t *r = task->privdata;
  lua_createtable(r->L, n > 0 ? (n < RESP_PREALLOC_MAX ? n : RESP_PREALLOC_MAX) : 0, 0);
  return resp_place(r, task, 1);
}

static void *resp_integer(const redisReadTask *task, long long v) {
  redis_resp_t *r = task->privdata;
  lua_pushnumber(r->L, (lua_Number)v);
  return resp_place(r, task, 0);
}

static void *resp_nil(const redisReadTask *task) {
  redis_resp_t *r = task->privdata;
  lua_pushlightuserdata(r->L, NULL); /* moonfork.null, i.e. cjson.null */
  return resp_place(r, task, 0);
}

static void resp_free_object(void *obj) { (void)obj; /* the values belong to Lua */ }

static redisReplyObjectFunctions resp_functions = {resp_string, resp_array, resp_integer, resp_nil,
                                                   resp_free_object};

redis_resp_t *redis_resp_new(void) {
  redis_resp_t *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->reader = redisReaderCreateWithFunctions(&resp_functions);
  if (r->reader == NULL) {
    free(r);
    return NULL;
  }
  r->reader->privdata = r;
  r->open_ref = LUA_NOREF;
  r->max_pending = REDIS_RESP_MAX_PENDING;
  return r;
}

void redis_resp_free(lua_State *L, redis_resp_t *r) {
  if (r == NULL) return;
  if (L && r->open_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, r->open_ref);
  redisReaderFree(r->reader);
  free(r);
}

void redis_resp_limit(redis_resp_t *r, size_t max_pending) { r->max_pending = max_pending; }

int redis_resp_feed(redis_resp_t *r, const char *data, size_t n) {
  redisReader *rd = r->reader;
  if (rd->err || rd->len - rd->pos + n > r->max_pending) return -1;
  return redisReaderFeed(rd, data, n) == REDIS_OK ? 0 : -1;
}

/* Forgets the reply under construction (its arrays are dropped from the open table). */
static void resp_reset(lua_State *L, redis_resp_t *r) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->open_ref);
  for (int d = 0; d < 10; d++) {
    lua_pushnil(L);
    lua_rawseti(L, -2, d);
  }
  lua_pop(L, 1);
  r->top_err = 0;
}

int redis_resp_next(lua_State *L, redis_resp_t *r, int *is_err) {
  void *reply = NULL;
  luaL_checkstack(L, 8, "redis reply");
  if (r->open_ref == LUA_NOREF) {
    lua_createtable(L, 10, 0);
    r->open_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  r->L = L;
  if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
    resp_reset(L, r);
    lua_pushstring(L, r->reader->errstr[0] ? r->reader->errstr : "Protocol error: bad reply"); /* hiredis's words */
    return -1;
  }
  if (reply == NULL) return 0; /* incomplete: the arrays built so far stay in the open table */
  *is_err = r->top_err;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->open_ref);
  lua_rawgeti(L, -1, 0);
  lua_replace(L, -2);
  resp_reset(L, r);
  return 1;
}

/* The argument at i (the n-th after the command's name) as a string, in place: integral numbers
 * without an exponent. */
static const char *resp_arg(lua_State *L, int i, int n, size_t *len) {
  int t = lua_type(L, i);
  if (t == LUA_TNUMBER) {
    lua_Number v = lua_tonumber(L, i);
    if (v == floor(v) && fabs(v) < 9.0e15) {
      char buf[32];
      int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
      lua_pushlstring(L, buf, (size_t)n);
      lua_replace(L, i);
    }
  } else if (t != LUA_TSTRING) {
    luaL_error(L, "%s: argument #%d must be a string or a number, not a %s",
               n > 0 && lua_type(L, i - n) == LUA_TSTRING ? lua_tostring(L, i - n) : "redis command", n,
               lua_typename(L, t));
  }
  return lua_tolstring(L, i, len);
}

char *redis_resp_format(lua_State *L, int idx, size_t *len) {
  int argc = lua_gettop(L) - idx + 1;
  if (argc <= 0) luaL_error(L, "a redis command needs a name");
  const char *small_argv[16];
  size_t small_len[16];
  const char **argv = small_argv;
  size_t *argvlen = small_len;
  if (argc > 16) {
    argv = lua_newuserdata(L, (size_t)argc * (sizeof *argv + sizeof *argvlen));
    argvlen = (size_t *)(argv + argc);
  }
  for (int i = 0; i < argc; i++) argv[i] = resp_arg(L, idx + i, i, &argvlen[i]);
  char *cmd = NULL;
  int n = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
  if (n < 0 || cmd == NULL) luaL_error(L, "out of memory formatting a redis command");
  *len = (size_t)n;
  return cmd;
}
