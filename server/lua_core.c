/* lua_core.c -- the worker's `moonfork.core` module: timers, logging, process facts.
 *
 * Timers follow luv's handle pattern: the uv_timer_t lives in the userdata, which is pinned in the
 * registry while the timer is open, so a script may drop its handle to an interval and the interval
 * goes on; clearing or firing a one-shot closes the handle and unpins it in the close callback. */
#include "lua_core.h"

#include <lauxlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "lua_env.h"

#define TIMER_MT "moonfork.timer"

typedef struct {
  uv_timer_t timer;
  lua_State *L;
  int fn_ref;
  int self_ref;
  int closing;
} ltimer_t;

static uv_loop_t *core_loop;
/* The main thread: callbacks must never run on the coroutine that happened to create the timer. */
static lua_State *core_L;

static void timer_closed(uv_handle_t *h) {
  ltimer_t *t = h->data;
  lua_State *L = t->L;
  luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
  t->fn_ref = LUA_NOREF;
  int self = t->self_ref;
  t->self_ref = LUA_NOREF;
  luaL_unref(L, LUA_REGISTRYINDEX, self); /* t may be collected from here on */
}

static void timer_close(ltimer_t *t) {
  if (t->closing) return;
  t->closing = 1;
  uv_close((uv_handle_t *)&t->timer, timer_closed);
}

static void on_timer(uv_timer_t *h) {
  ltimer_t *t = h->data;
  lua_State *L = t->L;
  int repeating = uv_timer_get_repeat(h) > 0;
  if (!repeating) timer_close(t);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
  mf_lua_pcall(L, 0, 0, "error in timer callback");
}

/* core.timer(ms, repeat_ms, fn) -> timer */
static int core_timer(lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  lua_Number rep = luaL_optnumber(L, 2, 0);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (ms < 0) ms = 0;
  if (rep < 0) rep = 0;
  ltimer_t *t = lua_newuserdata(L, sizeof *t);
  t->L = core_L;
  t->closing = 0;
  uv_timer_init(core_loop, &t->timer);
  t->timer.data = t;
  luaL_getmetatable(L, TIMER_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 3);
  t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_timer_start(&t->timer, on_timer, (uint64_t)ms, (uint64_t)rep);
  return 1;
}

/* core.timer_stop(timer): stopping twice, or a fired one-shot, is fine. */
static int core_timer_stop(lua_State *L) {
  ltimer_t *t = luaL_checkudata(L, 1, TIMER_MT);
  timer_close(t);
  return 0;
}

/* core.fs_stat(path) -> { size, mtime, type = "file"|"dir"|"other" } | nil, "ENOENT: ..." (blocking) */
static int core_fs_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int r = uv_fs_stat(NULL, &req, path, NULL);
  if (r < 0) {
    uv_fs_req_cleanup(&req);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", uv_err_name(r), uv_strerror(r));
    return 2;
  }
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, (lua_Number)req.statbuf.st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)req.statbuf.st_mtim.tv_sec);
  lua_setfield(L, -2, "mtime");
  uint64_t fmt = req.statbuf.st_mode & S_IFMT;
  lua_pushstring(L, fmt == S_IFREG ? "file" : fmt == S_IFDIR ? "dir" : "other");
  lua_setfield(L, -2, "type");
  uv_fs_req_cleanup(&req);
  return 1;
}

/* core.fs_realpath(path) -> the canonical path, symlinks resolved | nil, err (blocking) */
static int core_fs_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int r = uv_fs_realpath(NULL, &req, path, NULL);
  if (r < 0) {
    uv_fs_req_cleanup(&req);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", uv_err_name(r), uv_strerror(r));
    return 2;
  }
  lua_pushstring(L, req.ptr);
  uv_fs_req_cleanup(&req);
  return 1;
}

static int events_ref = LUA_NOREF;

/* core.events(fn): fn(name) is called for "drain" and "exit". */
static int core_events(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, events_ref);
  lua_pushvalue(L, 1);
  events_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

void lua_core_emit(lua_State *L, const char *name) {
  if (events_ref == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, events_ref);
  lua_pushstring(L, name);
  mf_lua_pcall(L, 1, 0, "error in moonfork.on() listener");
}

static int core_log(lua_State *L) {
  mf_log_block(luaL_checkstring(L, 1));
  return 0;
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_now(core_loop));
  return 1;
}

void lua_core_open(lua_State *L, uv_loop_t *loop, const mf_config_t *cfg) {
  static const luaL_Reg fns[] = {
      {"timer", core_timer}, {"timer_stop", core_timer_stop}, {"log", core_log}, {"now", core_now},
      {"fs_stat", core_fs_stat}, {"events", core_events}, {"fs_realpath", core_fs_realpath}, {NULL, NULL}};
  core_loop = loop;
  core_L = L;
  luaL_newmetatable(L, TIMER_MT);
  lua_pop(L, 1);
  luaL_register(L, NULL, fns);
  lua_pushinteger(L, (lua_Integer)cfg->worker_id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, (lua_Integer)getpid());
  lua_setfield(L, -2, "pid");
  lua_pushinteger(L, (lua_Integer)cfg->workers);
  lua_setfield(L, -2, "workers");
  lua_pushstring(L, cfg->script);
  lua_setfield(L, -2, "script");
  lua_pushnumber(L, (lua_Number)cfg->serial);
  lua_setfield(L, -2, "serial");
}
