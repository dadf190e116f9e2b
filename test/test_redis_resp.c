/* test_redis_resp.c -- unit tests for server/redis_resp.c: raw RESP bytes in, Lua values out. */
#include <lauxlib.h>
#include <lualib.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>

#include "../server/redis_resp.h"
#include "test.h"

/* Feeds `bytes` and takes one reply: 1 (pushed), 0 (incomplete) or -1 (error message pushed). */
static int take(lua_State *L, redis_resp_t *r, const char *bytes, int *is_err) {
  *is_err = 0;
  CHECK(redis_resp_feed(r, bytes, strlen(bytes)) == 0);
  return redis_resp_next(L, r, is_err);
}

static void test_scalars(lua_State *L) {
  redis_resp_t *r = redis_resp_new();
  int is_err;
  CHECK(take(L, r, "+OK\r\n", &is_err) == 1 && !is_err);
  CHECK_STR(lua_tostring(L, -1), "OK");
  lua_settop(L, 0);
  CHECK(take(L, r, "$5\r\nhel", &is_err) == 0 && lua_gettop(L) == 0); /* a bulk split in two */
  CHECK(take(L, r, "lo\r\n", &is_err) == 1);
  CHECK_STR(lua_tostring(L, -1), "hello");
  lua_settop(L, 0);
  CHECK(take(L, r, ":-42\r\n", &is_err) == 1 && lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == -42);
  CHECK(take(L, r, "$-1\r\n", &is_err) == 1 && lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
  CHECK(take(L, r, "$0\r\n\r\n", &is_err) == 1 && lua_objlen(L, -1) == 0 && lua_isstring(L, -1));
  CHECK(take(L, r, "-ERR unknown command 'FOO'\r\n", &is_err) == 1 && is_err);
  CHECK_STR(lua_tostring(L, -1), "ERR unknown command 'FOO'");
  CHECK(take(L, r, "+after an error\r\n", &is_err) == 1 && !is_err);
  lua_settop(L, 0);
  CHECK(take(L, r, "", &is_err) == 0 && lua_gettop(L) == 0);
  redis_resp_free(L, r);
}

static void test_binary_bulk(lua_State *L) {
  redis_resp_t *r = redis_resp_new();
  int is_err;
  CHECK(redis_resp_feed(r, "$3\r\na\0b\r\n", 9) == 0);
  CHECK(redis_resp_next(L, r, &is_err) == 1);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  CHECK(len == 3 && memcmp(s, "a\0b", 3) == 0);
  lua_settop(L, 0);
  redis_resp_free(L, r);
}

/* *3 [ 1, [ "a", nil, [] ], nil-array ], fed a byte at a time */
static void test_nested_arrays(lua_State *L) {
  redis_resp_t *r = redis_resp_new();
  const char *bytes = "*4\r\n:1\r\n*3\r\n$1\r\na\r\n$-1\r\n*0\r\n*-1\r\n-WRONGTYPE inner\r\n";
  int is_err = 0, got = 0;
  for (size_t i = 0; bytes[i]; i++) {
    CHECK(redis_resp_feed(r, bytes + i, 1) == 0);
    got = redis_resp_next(L, r, &is_err);
    if (bytes[i + 1]) CHECK(got == 0);
  }
  CHECK(got == 1 && !is_err && lua_gettop(L) == 1 && lua_objlen(L, 1) == 4);
  lua_rawgeti(L, 1, 1);
  CHECK(lua_tonumber(L, -1) == 1);
  lua_rawgeti(L, 1, 2);
  CHECK(lua_objlen(L, -1) == 3);
  lua_rawgeti(L, -1, 1);
  CHECK_STR(lua_tostring(L, -1), "a");
  lua_rawgeti(L, -2, 2);
  CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA);
  lua_rawgeti(L, -3, 3);
  CHECK(lua_istable(L, -1) && lua_objlen(L, -1) == 0);
  lua_rawgeti(L, 1, 3);
  CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
  lua_rawgeti(L, 1, 4); /* an error inside an array: { false, "..." } */
  CHECK(lua_istable(L, -1));
  lua_rawgeti(L, -1, 1);
  CHECK(lua_isboolean(L, -1) && !lua_toboolean(L, -1));
  lua_rawgeti(L, -2, 2);
  CHECK_STR(lua_tostring(L, -1), "WRONGTYPE inner");
  lua_settop(L, 0);
  /* two replies in one read, then one split over two */
  CHECK(take(L, r, "*1\r\n+x\r\n:7\r\n*2\r\n$1\r\n", &is_err) == 1 && lua_objlen(L, -1) == 1);
  CHECK(redis_resp_next(L, r, &is_err) == 1 && lua_tonumber(L, -1) == 7);
  CHECK(redis_resp_next(L, r, &is_err) == 0);
  CHECK(take(L, r, "b\r\n$1\r\nc\r\n", &is_err) == 1 && lua_objlen(L, -1) == 2);
  lua_rawgeti(L, -1, 2);
  CHECK_STR(lua_tostring(L, -1), "c");
  lua_settop(L, 0);
  redis_resp_free(L, r);
}

static void test_malformed(lua_State *L) {
  int is_err;
  redis_resp_t *r = redis_resp_new();
  CHECK(take(L, r, "?what\r\n", &is_err) == -1);
  CHECK_STR(lua_tostring(L, -1), "Protocol error, got \"?\" as reply type byte");
  lua_settop(L, 0);
  CHECK(redis_resp_feed(r, "+OK\r\n", 5) == -1); /* the reader stays failed: drop the connection */
  redis_resp_free(L, r);

  /* a bad byte in the middle of an array */
  r = redis_resp_new();
  CHECK(take(L, r, "*2\r\n:1\r\n!x\r\n", &is_err) == -1);
  lua_settop(L, 0);
  redis_resp_free(L, r);

  /* nesting deeper than hiredis allows: an error, no stack growth */
  r = redis_resp_new();
  char deep[400] = "";
  for (int i = 0; i < 60; i++) strcat(deep, "*1\r\n");
  CHECK(take(L, r, deep, &is_err) == -1);
  CHECK(strstr(lua_tostring(L, -1), "nested") != NULL);
  lua_settop(L, 0);
  redis_resp_free(L, r);
}

static void test_huge(lua_State *L) {
  int is_err;
  redis_resp_t *r = redis_resp_new();
  /* a huge declared array: no huge preallocation; the elements that came are kept */
  CHECK(take(L, r, "*2000000000\r\n:1\r\n", &is_err) == 0 && lua_gettop(L) == 0);
  redis_resp_free(L, r);
  /* a bulk string that would buffer past the bound: refused (a bound of 4 MB here) */
  r = redis_resp_new();
  redis_resp_limit(r, 4 * 1024 * 1024);
  CHECK(take(L, r, "$999999999999\r\n", &is_err) == 0);
  size_t chunk = 1024 * 1024;
  char *junk = malloc(chunk);
  memset(junk, 'x', chunk);
  int rc = 0;
  for (int i = 0; i < 20 && rc == 0; i++) rc = redis_resp_feed(r, junk, chunk);
  CHECK(rc == -1);
  free(junk);
  redis_resp_free(L, r);
  /* a large, complete array */
  r = redis_resp_new();
  CHECK(redis_resp_feed(r, "*5000\r\n", 7) == 0);
  for (int i = 0; i < 5000; i++) CHECK(redis_resp_feed(r, ":5\r\n", 4) == 0);
  CHECK(redis_resp_next(L, r, &is_err) == 1 && lua_objlen(L, -1) == 5000);
  lua_settop(L, 0);
  redis_resp_free(L, r);
}

static int format_call(lua_State *L) {
  size_t len;
  char *cmd = redis_resp_format(L, 1, &len);
  lua_pushlstring(L, cmd, len);
  redisFreeCommand(cmd);
  return 1;
}

static void test_format(lua_State *L) {
  lua_pushcfunction(L, format_call);
  lua_pushliteral(L, "SET");
  lua_pushlstring(L, "k\0y", 3);
  lua_pushnumber(L, 1e15);
  lua_pushnumber(L, 1.5);
  CHECK(lua_pcall(L, 4, 1, 0) == 0);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  const char want[] = "*4\r\n$3\r\nSET\r\n$3\r\nk\0y\r\n$16\r\n1000000000000000\r\n$3\r\n1.5\r\n";
  CHECK(len == sizeof want - 1 && memcmp(s, want, len) == 0);
  lua_settop(L, 0);
  lua_pushcfunction(L, format_call);
  lua_pushliteral(L, "SET");
  lua_newtable(L);
  CHECK(lua_pcall(L, 2, 1, 0) != 0);
  CHECK_STR(lua_tostring(L, -1), "SET: argument #1 must be a string or a number, not a table");
  lua_settop(L, 0);
  lua_pushcfunction(L, format_call); /* many arguments */
  for (int i = 0; i < 40; i++) lua_pushinteger(L, i);
  CHECK(lua_pcall(L, 40, 1, 0) == 0 && strncmp(lua_tostring(L, -1), "*40\r\n$1\r\n0\r\n", 12) == 0);
  lua_settop(L, 0);
}

int main(void) {
  lua_State *L = luaL_newstate();
  test_scalars(L);
  test_binary_bulk(L);
  test_nested_arrays(L);
  test_malformed(L);
  test_huge(L);
  test_format(L);
  lua_close(L);
  TEST_DONE();
}
