/* bind_pg.c -- PostgreSQL connections as Lua sees them: `moonfork.core.pg`.
 *
 * A connection is a binding object (bind_obj.h) over its net_pg_t, pinned while open; its target is
 * the connection object lua/moonfork/pg.lua made, and every event is called with it. The Lua half
 * pools, waits and times out; this half sends queries and turns answers into Lua tables. Parameters
 * always travel apart from the SQL text (PQsendQueryParams): a string is never spliced into a
 * statement. Values come back in text format and are converted by type OID (net_pg_type.c). */
#include "bind_pg.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bind_obj.h"
#include "luastate.h"
#include "net_pg.h"
#include "net_pg_type.h"

static bind_type_t pg_type;
static lua_State *pg_L; /* the main thread: callbacks never run on the coroutine that made the query */

enum { CB_CONNECTED, CB_RESULT, CB_NOTIFY, CB_DEAD, CB_DECODE, CB_COUNT };
static const char *const pg_names[CB_COUNT] = {"connected", "result", "notify", "dead", "decode"};
static int pg_refs[CB_COUNT] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};

#define PG_MAX_PARAMS 65535 /* the protocol's limit */

static net_pg_t *pg_arg(lua_State *L) { return bind_obj_check(L, 1, &pg_type)->ptr; }

static int pg_fail(lua_State *L, const char *err) {
  lua_pushnil(L);
  lua_pushstring(L, err);
  return 2;
}

/* pg.on{ connected = fn(conn, err), result = fn(conn, rows | nil, err, code), notify = fn(conn,
 *        channel, payload), dead = fn(conn, err), decode = json decoder } */
static int pg_on(lua_State *L) {
  bind_callbacks_set(L, 1, pg_names, pg_refs, CB_COUNT);
  return 0;
}

/* pg.connect(target, conninfo) -> ud | nil, err; then connected(target, err) */
static int pg_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *conninfo = luaL_checkstring(L, 2);
  char err[256];
  net_pg_t *p = net_pg_connect(conninfo, err, sizeof err);
  if (p == NULL) return pg_fail(L, err);
  bind_obj_t *obj = bind_obj_new(L, &pg_type, p);
  *net_pg_user_ref(p) = obj->self_ref;
  bind_obj_set_target(L, obj, 1);
  return 1;
}

/* Turns the parameter at idx into a string in place (nil for SQL NULL); raises for what cannot go. */
static void pg_param(lua_State *L, int idx) {
  char buf[64];
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: case LUA_TNIL:
    return;
  case LUA_TNUMBER: {
    double v = lua_tonumber(L, idx);
    if (isnan(v))
      snprintf(buf, sizeof buf, "NaN");
    else if (isinf(v))
      snprintf(buf, sizeof buf, v > 0 ? "Infinity" : "-Infinity");
    else if (v == floor(v) && fabs(v) < 1e18)
      snprintf(buf, sizeof buf, "%.0f", v); /* an integer, also for int8 columns */
    else
      snprintf(buf, sizeof buf, "%.17g", v);
    lua_pushstring(L, buf);
    break;
  }
  case LUA_TBOOLEAN:
    lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
    break;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) { /* moonfork.null */
      lua_pushnil(L);
      break;
    }
    /* fall through */
  default:
    luaL_error(L, "moonfork.pg: parameter $%d is a %s: send strings, numbers, booleans or moonfork.null",
               idx - 2, luaL_typename(L, idx));
  }
  lua_replace(L, idx);
}

/* pg.query(ud, sql, ...) -> true | nil, err; then result(target, rows | nil, err, code) */
static int pg_query(lua_State *L) {
  net_pg_t *p = pg_arg(L);
  const char *sql = luaL_checkstring(L, 2);
  int n = lua_gettop(L) - 2;
  if (n > PG_MAX_PARAMS) return luaL_error(L, "moonfork.pg: more than %d parameters", PG_MAX_PARAMS);
  if (p == NULL) return pg_fail(L, "closed");
  for (int i = 0; i < n; i++) pg_param(L, i + 3);
  const char **values = malloc((size_t)(n + 1) * sizeof *values);
  int *lengths = malloc((size_t)(n + 1) * sizeof *lengths), *formats = malloc((size_t)(n + 1) * sizeof *formats);
  int r = -1;
  if (values && lengths && formats) {
    for (int i = 0; i < n; i++) {
      size_t len = 0;
      values[i] = lua_tolstring(L, i + 3, &len); /* NULL for nil: SQL NULL */
      lengths[i] = (int)len;
      formats[i] = values[i] && memchr(values[i], '\0', len) ? 1 : 0; /* bytes: as bytea */
    }
    r = net_pg_query(p, sql, n, values, lengths, formats);
  }
  free(values);
  free(lengths);
  free(formats);
  if (r != 0) return pg_fail(L, values && lengths && formats ? net_pg_error(p) : "out of memory");
  lua_pushboolean(L, 1);
  return 1;
}

/* pg.idle(ud) -> whether the connection may go back to a pool as it is */
static int pg_idle(lua_State *L) {
  net_pg_t *p = pg_arg(L);
  lua_pushboolean(L, p != NULL && net_pg_idle(p));
  return 1;
}

/* pg.in_transaction(ud) -> whether a transaction is open (or failed and not rolled back) */
static int pg_in_transaction(lua_State *L) {
  net_pg_t *p = pg_arg(L);
  lua_pushboolean(L, p != NULL && net_pg_in_transaction(p));
  return 1;
}

/* pg.close(ud): closing twice is fine. */
static int pg_close(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &pg_type);
  net_pg_t *p = obj->ptr;
  if (p == NULL) return 0;
  *net_pg_user_ref(p) = LUA_NOREF;
  bind_obj_invalidate(L, obj);
  net_pg_close(p);
  return 0;
}

static int pg_push_call(net_pg_t *p, int cb) {
  return bind_push_call(pg_L, pg_refs[cb], bind_obj_at(pg_L, *net_pg_user_ref(p)));
}

static void pg_on_connect(net_pg_t *p, const char *err) {
  if (!pg_push_call(p, CB_CONNECTED)) return;
  if (err)
    lua_pushstring(pg_L, err);
  else
    lua_pushnil(pg_L);
  luastate_pcall(pg_L, 2, 0, "error in a pg connect callback");
}

/* Pushes the rows of res (a table of tables keyed by column name, with .affected and .command), or
 * nil and a conversion error. */
static int pg_push_rows(lua_State *L, const PGresult *res) {
  int nrows = PQntuples(res), nf = PQnfields(res);
  luaL_checkstack(L, nf + 8, "too many columns");
  int names = lua_gettop(L) + 1;
  for (int j = 0; j < nf; j++) lua_pushstring(L, PQfname(res, j));
  if (pg_refs[CB_DECODE] != LUA_NOREF) lua_rawgeti(L, LUA_REGISTRYINDEX, pg_refs[CB_DECODE]);
  else lua_pushnil(L);
  int decode = names + nf;
  lua_createtable(L, nrows, 2);
  for (int i = 0; i < nrows; i++) {
    lua_createtable(L, 0, nf);
    for (int j = 0; j < nf; j++) {
      lua_pushvalue(L, names + j);
      if (PQgetisnull(res, i, j)) {
        lua_pushlightuserdata(L, NULL);
      } else if (pg_type_push(L, PQftype(res, j), PQgetvalue(res, i, j), (size_t)PQgetlength(res, i, j),
                              lua_isnil(L, decode) ? 0 : decode) != 0) {
        lua_replace(L, names);
        lua_settop(L, names);
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
      }
      lua_rawset(L, -3);
    }
    lua_rawseti(L, -2, i + 1);
  }
  const char *tuples = PQcmdTuples((PGresult *)res), *status = PQcmdStatus((PGresult *)res);
  if (tuples && *tuples) {
    lua_pushnumber(L, strtod(tuples, NULL));
    lua_setfield(L, -2, "affected");
  }
  if (status && *status) {
    lua_pushlstring(L, status, strcspn(status, " "));
    lua_setfield(L, -2, "command");
  }
  lua_replace(L, names);
  lua_settop(L, names);
  return 1;
}

/* nil, "SQLSTATE: message", SQLSTATE for a failed query ("08006" when libpq has no code: the
 * connection failed). */
static void pg_push_error(lua_State *L, const PGresult *res, const char *err) {
  const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (msg == NULL) msg = res ? PQresultErrorMessage(res) : err;
  if (code == NULL) code = "08006";
  size_t len = strlen(msg);
  while (len > 0 && msg[len - 1] == '\n') len--;
  lua_pushnil(L);
  lua_pushfstring(L, "%s: ", code);
  lua_pushlstring(L, msg, len);
  lua_concat(L, 2);
  lua_pushstring(L, code);
}

static void pg_on_result(net_pg_t *p, const PGresult *res, const char *err) {
  if (!pg_push_call(p, CB_RESULT)) return;
  int top = lua_gettop(pg_L);
  ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_SINGLE_TUPLE)
    pg_push_rows(pg_L, res);
  else if (st == PGRES_EMPTY_QUERY)
    pg_push_error(pg_L, NULL, "the query is empty");
  else
    pg_push_error(pg_L, res, err ? err : "the query failed");
  luastate_pcall(pg_L, lua_gettop(pg_L) - top + 1, 0, "error in a pg result callback");
}

static void pg_on_notify(net_pg_t *p, const char *channel, const char *payload) {
  if (!pg_push_call(p, CB_NOTIFY)) return;
  lua_pushstring(pg_L, channel);
  lua_pushstring(pg_L, payload ? payload : "");
  luastate_pcall(pg_L, 3, 0, "error in a pg notify callback");
}

static void pg_on_dead(net_pg_t *p, const char *err) {
  if (!pg_push_call(p, CB_DEAD)) return;
  lua_pushfstring(pg_L, "08006: %s", err);
  luastate_pcall(pg_L, 2, 0, "error in a pg connection callback");
}

void bind_pg_open(lua_State *L, uv_loop_t *loop) {
  static const net_pg_callbacks_t cbs = {pg_on_connect, pg_on_result, pg_on_notify, pg_on_dead};
  static const luaL_Reg fns[] = {{"on", pg_on},       {"connect", pg_connect},
                                 {"query", pg_query}, {"idle", pg_idle},
                                 {"close", pg_close}, {"in_transaction", pg_in_transaction},
                                 {NULL, NULL}};
  pg_L = L;
  net_pg_init(loop, &cbs);
  bind_type_init(L, &pg_type, "pg connection");
  bind_module_open(L, "moonfork.core.pg", fns);
  lua_pop(L, 1);
}
