/* net_pg_type.c -- PostgreSQL values (text format) to Lua values, by type OID.
 *
 * A pure function of (oid, text), apart from json, which is handed to a decoder the caller passes
 * (lua-cjson's), so it has a unit test with no server (test/test_pg_type.c). Results come in text
 * format: it is what psql shows, needs no per-type binary layout, and numbers parse as fast. A value
 * that does not parse as its type says so (an error, never a crash): the server is trusted to be
 * PostgreSQL, not to be bug-free. */
#include "net_pg_type.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PG_MAX_DIMS 8 /* PostgreSQL allows 6 */

static const struct {
  unsigned array, elem;
} pg_arrays[] = {
    {1000, PG_BOOL},  {1001, PG_BYTEA},  {1005, PG_INT2},    {1007, PG_INT4},  {1016, PG_INT8},
    {1028, PG_OID},   {199, PG_JSON},    {3807, PG_JSONB},   {1021, PG_FLOAT4}, {1022, PG_FLOAT8},
    {1231, PG_NUMERIC}, {1009, PG_TEXT}, {1015, PG_TEXT} /* varchar */, {1014, PG_TEXT} /* bpchar */,
    {1003, PG_TEXT} /* name */, {1002, PG_TEXT} /* char */, {2951, PG_TEXT} /* uuid */,
    {1182, PG_TEXT} /* date */, {1115, PG_TEXT} /* timestamp */, {1185, PG_TEXT} /* timestamptz */,
};

unsigned pg_type_elem(unsigned oid) {
  for (size_t i = 0; i < sizeof pg_arrays / sizeof pg_arrays[0]; i++)
    if (pg_arrays[i].array == oid) return pg_arrays[i].elem;
  return 0;
}

static int pg_fail(lua_State *L, const char *what, const char *s, size_t len) {
  lua_pushfstring(L, "bad %s value from the server: '%s'", what, len > 40 ? "(too long to show)" : s);
  return -1;
}

/* s is NUL-terminated (libpq's values are; array elements are copied into a terminated buffer). */
static int pg_push_int(lua_State *L, const char *s, size_t len) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (len == 0 || errno != 0 || end != s + len) return pg_fail(L, "integer", s, len);
  if (v > (1LL << 53) || v < -(1LL << 53))
    lua_pushlstring(L, s, len); /* a double would round it */
  else
    lua_pushnumber(L, (lua_Number)v);
  return 0;
}

static int pg_push_float(lua_State *L, const char *s, size_t len) {
  char *end;
  double v = strtod(s, &end); /* takes "NaN", "Infinity" and "-Infinity" as PostgreSQL writes them */
  if (len == 0 || end != s + len) return pg_fail(L, "float", s, len);
  lua_pushnumber(L, v);
  return 0;
}

static int pg_hex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* bytea: "\x" then two hex digits a byte (bytea_output = hex, the default), or the escape form
 * (printable bytes as they are, "\\" for a backslash, "\ooo" octal for the rest). */
static int pg_push_bytea(lua_State *L, const char *s, size_t len) {
  int top = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (len >= 2 && s[0] == '\\' && s[1] == 'x') {
    for (size_t i = 2; i < len; i += 2) {
      int hi = pg_hex((unsigned char)s[i]), lo = i + 1 < len ? pg_hex((unsigned char)s[i + 1]) : -1;
      if (hi < 0 || lo < 0) return lua_settop(L, top), pg_fail(L, "bytea", s, len);
      luaL_addchar(&b, (char)(hi << 4 | lo));
    }
  } else {
    for (size_t i = 0; i < len; i++) {
      if (s[i] != '\\') {
        luaL_addchar(&b, s[i]);
      } else if (i + 1 < len && s[i + 1] == '\\') {
        luaL_addchar(&b, '\\');
        i++;
      } else if (i + 3 < len && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7' &&
                 s[i + 3] >= '0' && s[i + 3] <= '7') {
        luaL_addchar(&b, (char)((s[i + 1] - '0') << 6 | (s[i + 2] - '0') << 3 | (s[i + 3] - '0')));
        i += 3;
      } else {
        return lua_settop(L, top), pg_fail(L, "bytea", s, len);
      }
    }
  }
  luaL_pushresult(&b);
  return 0;
}

static int pg_push_json(lua_State *L, const char *s, size_t len, int json_fn) {
  if (json_fn == 0) {
    lua_pushlstring(L, s, len);
    return 0;
  }
  lua_pushvalue(L, json_fn);
  lua_pushlstring(L, s, len);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    const char *msg = lua_tostring(L, -1);
    lua_pushfstring(L, "bad json value from the server: %s", msg ? msg : "?");
    lua_remove(L, -2);
    return -1;
  }
  return 0;
}

static int pg_push_scalar(lua_State *L, unsigned oid, const char *s, size_t len, int json_fn) {
  switch (oid) {
  case PG_INT2: case PG_INT4: case PG_INT8: case PG_OID:
    return pg_push_int(L, s, len);
  case PG_FLOAT4: case PG_FLOAT8:
    return pg_push_float(L, s, len);
  case PG_BOOL:
    if (len != 1 || (s[0] != 't' && s[0] != 'f')) return pg_fail(L, "bool", s, len);
    lua_pushboolean(L, s[0] == 't');
    return 0;
  case PG_BYTEA:
    return pg_push_bytea(L, s, len);
  case PG_JSON: case PG_JSONB:
    return pg_push_json(L, s, len, json_fn);
  default:
    lua_pushlstring(L, s, len);
    return 0;
  }
}

/* ---- arrays: {a,b,"c d",NULL,{nested}} with an optional "[1:2]=" bounds decoration ---- */

typedef struct {
  lua_State *L;
  const char *p, *end;
  char *buf; /* one element, unquoted and NUL-terminated (never longer than the whole text) */
  unsigned elem;
  int json_fn;
} pg_array_t;

/* Reads one element at a->p into a->buf; *is_null for an unquoted NULL. Returns its length or -1. */
static long pg_array_elem(pg_array_t *a, int *is_null) {
  size_t n = 0;
  *is_null = 0;
  if (a->p < a->end && *a->p == '"') {
    for (a->p++; a->p < a->end && *a->p != '"'; a->p++) {
      if (*a->p == '\\' && ++a->p == a->end) return -1;
      a->buf[n++] = *a->p;
    }
    if (a->p == a->end) return -1;
    a->p++;
  } else {
    while (a->p < a->end && *a->p != ',' && *a->p != '}') a->buf[n++] = *a->p++;
    if (n == 0) return -1;
    *is_null = n == 4 && strncasecmp(a->buf, "NULL", 4) == 0;
  }
  a->buf[n] = '\0';
  return (long)n;
}

static int pg_array_level(pg_array_t *a, int depth) {
  lua_State *L = a->L;
  if (depth > PG_MAX_DIMS || a->p == a->end || *a->p != '{') return -1;
  a->p++;
  lua_newtable(L);
  if (a->p < a->end && *a->p == '}') return a->p++, 0;
  for (int i = 1;; i++) {
    int r = 0;
    if (a->p < a->end && *a->p == '{') {
      r = pg_array_level(a, depth + 1);
      if (r != 0) return r;
    } else {
      int is_null;
      long n = pg_array_elem(a, &is_null);
      if (n < 0) return -1;
      if (is_null)
        lua_pushlightuserdata(L, NULL);
      else
        r = pg_push_scalar(L, a->elem, a->buf, (size_t)n, a->json_fn);
      if (r != 0) return -2; /* the element's own message is on the stack */
    }
    lua_rawseti(L, -2, i);
    if (a->p == a->end) return -1;
    if (*a->p++ == '}') return 0;
    if (a->p[-1] != ',') return -1;
  }
}

static int pg_push_array(lua_State *L, unsigned elem, const char *s, size_t len, int json_fn) {
  int top = lua_gettop(L);
  pg_array_t a = {L, s, s + len, malloc(len + 1), elem, json_fn};
  if (a.buf == NULL) return lua_pushstring(L, "out of memory"), -1;
  if (a.p < a.end && *a.p == '[') { /* bounds other than 1: the elements still go from 1 */
    while (a.p < a.end && *a.p != '=') a.p++;
    if (a.p < a.end) a.p++;
  }
  int r = pg_array_level(&a, 1);
  if (r == 0 && a.p != a.end) r = -1;
  free(a.buf);
  if (r == 0) return 0;
  if (r == -2) {
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return -1;
  }
  lua_settop(L, top);
  return pg_fail(L, "array", s, len);
}

int pg_type_push(lua_State *L, unsigned oid, const char *s, size_t len, int json_fn) {
  if (json_fn < 0) json_fn = lua_gettop(L) + json_fn + 1;
  unsigned elem = pg_type_elem(oid);
  if (elem) return pg_push_array(L, elem, s, len, json_fn);
  return pg_push_scalar(L, oid, s, len, json_fn);
}
