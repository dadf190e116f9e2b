-- moonfork: what scripts require: listen(), http.createServer(), timers and sleep.
local core = require "moonfork.core"

local type, select, unpack, error, ipairs, xpcall, tostring = type, select, unpack, error, ipairs, xpcall, tostring

local _M = { _VERSION = "0.1.0" }

local master = core.role == "master"

_M.http = require "moonfork.http"

-- listen(options, server) -> nodes. In the master this is where evaluation stops: the master only
-- needs the options (see server/script.c). In a worker it registers the server's handler.
function _M.listen(opts, server)
  if opts ~= nil and type(opts) ~= "table" then error("moonfork.listen(options, server): options must be a table", 2) end
  if type(server) == "function" then server = _M.http.createServer(server) end
  if type(server) ~= "table" or type(server.handler) ~= "function" then
    error("moonfork.listen(options, server): server must come from moonfork.http.createServer(handler)", 2)
  end
  if master then core.probe_listen(opts) end -- does not return
  local http = _M.http
  core.serve(http.dispatcher(server), http.on_conn_closed, http.on_conn_drain)
  local nodes = require("moonfork.mesh").nodes
  _M.nodes = nodes
  return nodes
end

if master then
  -- The master never runs timers or handlers: loading a script there must not start any.
  _M.setTimeout = function() return false end
  _M.setInterval = _M.setTimeout
  _M.clearTimer = function() end
  _M.sleep = function() error("moonfork.sleep() can only be called from a request handler or a timer callback", 2) end
  _M.static = function() return function() return false end end
  _M.log = function() end
  _M.on = function() end
  return _M
end

local sched = require "moonfork.sched"

-- moonfork.on("drain", fn): this worker stops taking connections (a reload, a shutdown): end long
-- polls and streams so their clients reconnect to another worker. moonfork.on("exit", fn): just
-- before the worker exits (close connections to databases). Errors are logged.
local listeners = { drain = {}, exit = {} }
function _M.on(event, fn)
  if not listeners[event] then error("moonfork.on(event, fn): event must be 'drain' or 'exit'", 2) end
  if type(fn) ~= "function" then error("moonfork.on(event, fn): fn must be a function", 2) end
  local list = listeners[event]
  list[#list + 1] = fn
end
_M.draining = false -- true once this worker stops taking connections: answer long waits at once
core.events(function(event)
  if event == "drain" then _M.draining = true end
  for _, fn in ipairs(listeners[event] or {}) do
    local ok, err = xpcall(fn, debug.traceback)
    if not ok then core.log("error in moonfork.on('" .. event .. "') listener: " .. tostring(err)) end
  end
end)
local timer, timer_stop, spawn = core.timer, core.timer_stop, sched.spawn

_M.id = core.id
_M.workers = core.workers
_M.pid = core.pid
_M.sleep = sched.sleep
_M.now = core.now
_M.log = core.log
_M.static = require "moonfork.static"

local function check(ms, fn, name)
  if type(ms) ~= "number" or ms < 0 then error("moonfork." .. name .. "(ms, fn): ms must be a number >= 0", 3) end
  if type(fn) ~= "function" then error("moonfork." .. name .. "(ms, fn): fn must be a function", 3) end
end

local function timer_error(trace)
  core.log("error in timer callback: " .. trace)
end

-- The function a timer runs: fn(...) in a coroutine of its own (so it may sleep).
local function runner(fn, ...)
  local n = select("#", ...)
  if n == 0 then return function() spawn(fn, timer_error) end end
  local args = { ... }
  return function() spawn(function() fn(unpack(args, 1, n)) end, timer_error) end
end

-- Runs fn(...) once after ms milliseconds.
function _M.setTimeout(ms, fn, ...)
  check(ms, fn, "setTimeout")
  return timer(ms, 0, runner(fn, ...))
end

-- Runs fn(...) every ms milliseconds (at least 1).
function _M.setInterval(ms, fn, ...)
  check(ms, fn, "setInterval")
  if ms < 1 then ms = 1 end
  return timer(ms, ms, runner(fn, ...))
end

function _M.clearTimer(t)
  if t then timer_stop(t) end
end

return _M
