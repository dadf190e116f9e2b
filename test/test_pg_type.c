/* test_pg_type.c -- PostgreSQL text-format values to Lua values (server/net_pg_type.c), no server. */
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>

#include "net_pg_type.h"
#include "test.h"

static lua_State *L;
static int json_fn; /* cjson.decode's stack index, 0 when lua-cjson is missing */

/* Converts s as type oid; leaves the value on the stack; returns the pg_type_push result. */
static int conv(unsigned oid, const char *s) {
  lua_settop(L, json_fn);
  return pg_type_push(L, oid, s, strlen(s), json_fn);
}

static double num(unsigned oid, const char *s) {
  CHECK(conv(oid, s) == 0);
  CHECK(lua_type(L, -1) == LUA_TNUMBER);
  return lua_tonumber(L, -1);
}

static const char *str(unsigned oid, const char *s, size_t *len) {
  CHECK(conv(oid, s) == 0);
  CHECK(lua_type(L, -1) == LUA_TSTRING);
  return lua_tolstring(L, -1, len);
}

static void check_error(unsigned oid, const char *s) {
  CHECK(conv(oid, s) == -1);
  CHECK(lua_type(L, -1) == LUA_TSTRING);
  CHECK(lua_gettop(L) == json_fn + 1);
}

/* The element i of the table on the stack top (pushed). */
static void elem(int i) { lua_rawgeti(L, -1, i); }

static void test_integers(void) {
  CHECK(num(PG_INT2, "-32768") == -32768);
  CHECK(num(PG_INT4, "2147483647") == 2147483647.0);
  CHECK(num(PG_INT8, "9007199254740992") == 9007199254740992.0); /* 2^53: still exact */
  CHECK(num(PG_INT8, "-9007199254740992") == -9007199254740992.0);
  size_t n;
  CHECK_STR(str(PG_INT8, "9007199254740993", &n), "9007199254740993"); /* 2^53 + 1: a string */
  CHECK_STR(str(PG_INT8, "-9223372036854775808", &n), "-9223372036854775808");
  CHECK(num(PG_OID, "4294967295") == 4294967295.0);
  check_error(PG_INT4, "12x");
  check_error(PG_INT4, "");
  check_error(PG_INT8, "99999999999999999999");
}

static void test_floats(void) {
  CHECK(num(PG_FLOAT8, "1.5") == 1.5);
  CHECK(num(PG_FLOAT4, "-0.25") == -0.25);
  CHECK(num(PG_FLOAT8, "1e+300") == 1e300);
  CHECK(isnan(num(PG_FLOAT8, "NaN")));
  CHECK(num(PG_FLOAT8, "Infinity") == INFINITY);
  CHECK(num(PG_FLOAT4, "-Infinity") == -INFINITY);
  check_error(PG_FLOAT8, "1.5.5");
}

static void test_strings_and_bools(void) {
  size_t n;
  CHECK_STR(str(PG_NUMERIC, "12345678901234567890.000000001", &n), "12345678901234567890.000000001");
  CHECK_STR(str(PG_NUMERIC, "NaN", &n), "NaN");
  CHECK_STR(str(PG_TEXT, "it's \"text\"", &n), "it's \"text\"");
  CHECK_STR(str(1082 /* date: not converted */, "2024-02-29", &n), "2024-02-29");
  CHECK(conv(PG_BOOL, "t") == 0 && lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1));
  CHECK(conv(PG_BOOL, "f") == 0 && lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
  check_error(PG_BOOL, "yes");
}

static void test_bytea(void) {
  size_t n;
  const char *s = str(PG_BYTEA, "\\x00ff41", &n);
  CHECK(n == 3 && s[0] == 0 && (unsigned char)s[1] == 0xff && s[2] == 'A');
  CHECK(str(PG_BYTEA, "\\x", &n) && n == 0);
  s = str(PG_BYTEA, "a\\\\b\\000\\377", &n); /* the escape form */
  CHECK(n == 5 && memcmp(s, "a\\b\0\377", 5) == 0);
  check_error(PG_BYTEA, "\\x0");
  check_error(PG_BYTEA, "\\xzz");
  check_error(PG_BYTEA, "a\\9");
}

static void test_json(void) {
  if (json_fn == 0) {
    fprintf(stderr, "lua-cjson not found: json cases skipped\n");
    return;
  }
  CHECK(conv(PG_JSONB, "{\"a\": [1, 2, null], \"b\": \"x\"}") == 0 && lua_istable(L, -1));
  lua_getfield(L, -1, "b");
  CHECK_STR(lua_tostring(L, -1), "x");
  lua_getfield(L, -2, "a");
  elem(2);
  CHECK(lua_tonumber(L, -1) == 2);
  lua_pop(L, 1);
  elem(3);
  CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
  CHECK(num(PG_JSON, "42") == 42);
  check_error(PG_JSON, "{not json");
}

static void test_arrays(void) {
  CHECK(conv(1007, "{1,2,NULL,-4}") == 0 && lua_objlen(L, -1) == 4);
  elem(1);
  CHECK(lua_tonumber(L, -1) == 1);
  lua_pop(L, 1);
  elem(3);
  CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
  lua_pop(L, 1);
  elem(4);
  CHECK(lua_tonumber(L, -1) == -4);

  CHECK(conv(1009, "{plain,\"with space\",\"q\\\"uote\",\"back\\\\slash\",\"NULL\",\"a,b\",\"{}\"}") == 0);
  const char *want[] = {"plain", "with space", "q\"uote", "back\\slash", "NULL", "a,b", "{}"};
  CHECK(lua_objlen(L, -1) == 7);
  for (int i = 0; i < 7; i++) {
    elem(i + 1);
    CHECK(lua_type(L, -1) == LUA_TSTRING);
    if (lua_type(L, -1) == LUA_TSTRING) CHECK_STR(lua_tostring(L, -1), want[i]);
    lua_pop(L, 1);
  }

  CHECK(conv(1000, "{t,f}") == 0);
  elem(2);
  CHECK(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
  CHECK(conv(1022, "{1.5,NaN,-Infinity}") == 0);
  elem(3);
  CHECK(lua_tonumber(L, -1) == -INFINITY);
  CHECK(conv(1016, "{9007199254740993,1}") == 0);
  elem(1);
  CHECK(lua_type(L, -1) == LUA_TSTRING);
  CHECK(conv(1231, "{1.10,2}") == 0);
  elem(1);
  CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "1.10") == 0);
  CHECK(conv(1001, "{\"\\\\x6869\",NULL}") == 0);
  elem(1);
  CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "hi") == 0);
  if (json_fn) {
    CHECK(conv(3807, "{\"{\\\"k\\\": 1}\",\"[true]\"}") == 0);
    elem(1);
    lua_getfield(L, -1, "k");
    CHECK(lua_tonumber(L, -1) == 1);
  }
  CHECK(conv(1007, "{}") == 0 && lua_istable(L, -1) && lua_objlen(L, -1) == 0);
  CHECK(conv(1007, "[0:1]={7,8}") == 0 && lua_objlen(L, -1) == 2);
  CHECK(conv(1007, "{{1,2},{3,4}}") == 0 && lua_objlen(L, -1) == 2);
  elem(2);
  elem(1);
  CHECK(lua_tonumber(L, -1) == 3);

  check_error(1007, "{1,2");
  check_error(1007, "{1,x}");
  check_error(1007, "{1,,2}");
  check_error(1009, "{\"open}");
  check_error(1007, "1,2");
  check_error(1007, "{1}junk");
  check_error(1007, "{{{{{{{{{{1}}}}}}}}}}");
}

int main(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "require");
  lua_pushstring(L, "cjson");
  if (lua_pcall(L, 1, 1, 0) == 0 && lua_istable(L, -1)) {
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    json_fn = lua_gettop(L);
  } else {
    lua_settop(L, 0);
  }
  test_integers();
  test_floats();
  test_strings_and_bools();
  test_bytea();
  test_json();
  test_arrays();
  lua_close(L);
  TEST_DONE();
}
