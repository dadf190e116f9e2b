-- moonfork: what scripts require: listen(), http.createServer(), timers and sleep.
local core = require "moonfork.core"

local type, select, error, setmetatable = type, select, error, setmetatable

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
  _M.http.serve(server)
  local nodes = require("moonfork.mesh").nodes
  _M.nodes = nodes
  return nodes
end

-- Clients a script may never use load on first use: moonfork.redis, moonfork.pg (in the
-- master too: a script makes its pools at the top, which the master also runs).
local lazy = { redis = "moonfork.redis", pg = "moonfork.pg", shared = "moonfork.shared", websocket = "moonfork.websocket" }
setmetatable(_M, { __index = function(t, k)
  local name = lazy[k]
  if name == nil then return nil end
  local m = require(name)
  rawset(t, k, m)
  return m
end })

if master then
  -- The master never runs timers or handlers: loading a script there must not start any.
  _M.setTimeout = function() return false end
  _M.setInterval = _M.setTimeout
  _M.clearTimer = function() end
  _M.sleep = function()
    error("moonfork.sleep() can only be called from a request handler, a timer or another moonfork callback", 2)
  end
  _M.static = function() return function() return false end end
  _M.log = function() end
  _M.on = function() end
  _M.shared = require "moonfork.shared" -- the master maps the dicts too (a script may look them up early)
  _M.socket = { tcp = function() return setmetatable({}, { __index = function() return function() return nil, "closed" end end }) end }
  return _M
end

local sched = require "moonfork.sched"

-- moonfork.on("drain", fn): this worker stops taking connections (a reload, a shutdown): end long
-- polls and streams so their clients reconnect to another worker. moonfork.on("exit", fn): just
-- before the worker exits (close connections to databases). Each listener runs in a coroutine of
-- its own (it may sleep); errors are logged.
local spawn = sched.spawn
local listeners = { drain = {}, exit = {} }
function _M.on(event, fn)
  if not listeners[event] then error("moonfork.on(event, fn): event must be 'drain' or 'exit'", 2) end
  if type(fn) ~= "function" then error("moonfork.on(event, fn): fn must be a function", 2) end
  local list = listeners[event]
  list[#list + 1] = fn
end
_M.draining = false -- true once this worker stops taking connections: answer long waits at once
local function listener_error(event)
  return function(trace) core.log("error in moonfork.on('" .. event .. "') listener: " .. trace) end
end
local function emitter(event)
  local list, report = listeners[event], listener_error(event)
  return function()
    if event == "drain" then _M.draining = true end
    for i = 1, #list do spawn(list[i], report) end
  end
end
core.on { drain = emitter("drain"), exit = emitter("exit") }

_M.id = core.id
_M.workers = core.workers
_M.pid = core.pid
_M.sleep = sched.sleep
_M.now = core.now
_M.log = core.log
_M.static = require "moonfork.static"
_M.socket = require "moonfork.socket"
_M.redisUrl = core.redis_url -- --redis URL / listen{ redis = URL }: the Redis the hosts of a cluster share
_M.null = require("cjson").null -- what a database's NULL becomes (the same value as cjson.null and ngx.null)

local function check(ms, fn, name)
  if type(ms) ~= "number" or not (ms >= 0 and ms <= sched.MAX_MS) then
    error("moonfork." .. name .. "(ms, fn): ms must be a number from 0 to 2^31", 3)
  end
  if type(fn) ~= "function" then error("moonfork." .. name .. "(ms, fn): fn must be a function", 3) end
end

-- Runs fn(...) once after ms milliseconds, in a coroutine of its own (so it may sleep).
function _M.setTimeout(ms, fn, ...)
  check(ms, fn, "setTimeout")
  return sched.timer(ms, 0, fn, select("#", ...), ...)
end

-- Runs fn(...) every ms milliseconds (at least 1).
function _M.setInterval(ms, fn, ...)
  check(ms, fn, "setInterval")
  if ms < 1 then ms = 1 end
  return sched.timer(ms, ms, fn, select("#", ...), ...)
end

function _M.clearTimer(t)
  if t then sched.timer_stop(t) end
end

return _M
