/* bind_core.c -- the worker's core modules: `moonfork.core` (logging, process facts, files, the
 * worker's events) and `moonfork.core.timer`.
 *
 * Timers are binding objects (bind_obj.h): the uv_timer_t is pinned while it runs, so a script may
 * drop its handle to an interval and the interval goes on; stopping it, or firing a one-shot, closes
 * it. A timer carries a target (a function, a job table, a waiting coroutine) that C hands back to
 * the one `fire` callback lua/moonfork/sched.lua registers: no closure per timer. */
#include "bind_core.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bind_obj.h"
#include "log.h"
#include "luastate.h"

static uv_loop_t *core_loop;
/* The main thread: callbacks must never run on the coroutine that happened to create the timer. */
static lua_State *core_L;
static bind_type_t timer_type;

static const char *const timer_names[] = {"fire", "sweep"};
static int timer_refs[] = {LUA_NOREF, LUA_NOREF};
/* The one timer behind every deadline of sched.lua (timed waits, sched.after): re-armed, never
 * allocated, and it calls `sweep`. */
static uv_timer_t core_deadline;

static const char *const event_names[] = {"drain", "exit"};
static int event_refs[] = {LUA_NOREF, LUA_NOREF};

static void timer_freed(uv_handle_t *handle) { free(handle); }

static void timer_close(lua_State *L, bind_obj_t *obj) {
  uv_handle_t *handle = obj->ptr;
  bind_obj_invalidate(L, obj);
  uv_close(handle, timer_freed);
}

static void timer_fired(uv_timer_t *handle) {
  bind_obj_t *obj = handle->data;
  lua_State *L = core_L;
  if (timer_refs[0] == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, timer_refs[0]);
  bind_obj_push_target(L, obj);
  bind_obj_push(L, obj);
  if (uv_timer_get_repeat(handle) == 0) timer_close(L, obj);
  luastate_pcall(L, 2, 0, "error in timer callback");
}

/* timer.start(ms, repeat_ms, target) -> timer: fire(target, timer) after ms, then every repeat_ms. */
static int timer_start(lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  lua_Number rep = luaL_optnumber(L, 2, 0);
  luaL_checkany(L, 3);
  if (ms < 0) ms = 0;
  if (rep < 0) rep = 0;
  uv_timer_t *handle = malloc(sizeof *handle);
  if (handle == NULL) return bind_push_uv_error(L, UV_ENOMEM);
  uv_timer_init(core_loop, handle);
  bind_obj_t *obj = bind_obj_new(L, &timer_type, handle);
  handle->data = obj;
  bind_obj_set_target(L, obj, 3);
  uv_timer_start(handle, timer_fired, (uint64_t)ms, (uint64_t)rep);
  return 1;
}

/* timer.stop(timer) -> true | nil, "ECLOSED: ..." (stopped before, or a one-shot that fired). */
static int timer_stop(lua_State *L) {
  bind_obj_t *obj = bind_obj_check(L, 1, &timer_type);
  if (obj->ptr == NULL) return bind_push_closed(L, &timer_type);
  timer_close(L, obj);
  lua_pushboolean(L, 1);
  return 1;
}

/* timer.on{ fire = fn(target, timer), sweep = fn() } */
static int timer_on(lua_State *L) {
  bind_callbacks_set(L, 1, timer_names, timer_refs, 2);
  return 0;
}

static void deadline_fired(uv_timer_t *handle) {
  (void)handle;
  if (timer_refs[1] == LUA_NOREF) return;
  lua_rawgeti(core_L, LUA_REGISTRYINDEX, timer_refs[1]);
  luastate_pcall(core_L, 0, 0, "error in the deadline sweep");
}

/* timer.arm(ms): sweep() runs ms from now (instead of when it was to run). */
static int timer_arm(lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  if (!(ms > 0)) ms = 0;
  uv_timer_start(&core_deadline, deadline_fired, (uint64_t)ms, 0);
  return 0;
}

/* Runs the blocking uv_fs_* call `fn` on the path in argument 1: 0, or (it failed) nil, err pushed and 2.
 * On 0 the caller owns req and cleans it up. */
static int fs_run(lua_State *L, int (*fn)(uv_loop_t *, uv_fs_t *, const char *, uv_fs_cb), uv_fs_t *req) {
  int r = fn(NULL, req, luaL_checkstring(L, 1), NULL);
  if (r >= 0) return 0;
  uv_fs_req_cleanup(req);
  return bind_push_uv_error(L, r);
}

/* core.fs_stat(path) -> { size, mtime, type = "file"|"dir"|"other" } | nil, "ENOENT: ..." (blocking) */
static int core_fs_stat(lua_State *L) {
  uv_fs_t req;
  if (fs_run(L, uv_fs_stat, &req) != 0) return 2;
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
  uv_fs_t req;
  if (fs_run(L, uv_fs_realpath, &req) != 0) return 2;
  lua_pushstring(L, req.ptr);
  uv_fs_req_cleanup(&req);
  return 1;
}

/* core.on{ drain = fn(), exit = fn() }: the worker's own events. */
static int core_on(lua_State *L) {
  bind_callbacks_set(L, 1, event_names, event_refs, 2);
  return 0;
}

void bind_core_emit(lua_State *L, const char *name) {
  for (int i = 0; i < 2; i++) {
    if (strcmp(name, event_names[i]) != 0 || event_refs[i] == LUA_NOREF) continue;
    lua_rawgeti(L, LUA_REGISTRYINDEX, event_refs[i]);
    luastate_pcall(L, 0, 0, "error in moonfork.on() listener");
  }
}

static int core_log(lua_State *L) {
  mf_log_block(luaL_checkstring(L, 1));
  return 0;
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_now(core_loop));
  return 1;
}

void bind_core_open(lua_State *L, uv_loop_t *loop, const mf_config_t *cfg) {
  static const luaL_Reg fns[] = {{"log", core_log}, {"now", core_now}, {"fs_stat", core_fs_stat},
                                 {"fs_realpath", core_fs_realpath}, {"on", core_on}, {NULL, NULL}};
  static const luaL_Reg timer_fns[] = {{"start", timer_start}, {"stop", timer_stop}, {"on", timer_on},
                                       {"arm", timer_arm},    {NULL, NULL}};
  core_loop = loop;
  core_L = L;
  uv_timer_init(loop, &core_deadline);
  bind_type_init(L, &timer_type, "timer");
  bind_module_open(L, "moonfork.core.timer", timer_fns);
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
  if (cfg->redis) {
    lua_pushstring(L, cfg->redis);
    lua_setfield(L, -2, "redis_url");
  }
}
