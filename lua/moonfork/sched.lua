-- moonfork.sched: runs request handlers and timer callbacks in coroutines, and lets them sleep.
local core = require "moonfork.core"

local create, resume, running, yield, status =
  coroutine.create, coroutine.resume, coroutine.running, coroutine.yield, coroutine.status
local traceback, tostring, type, getmetatable = debug.traceback, tostring, type, getmetatable

local _M = {}

-- Our coroutines: co -> its error handler, or false to log errors. Weak keys: finished ones go away.
local tasks = setmetatable({}, { __mode = "k" })

local function message(err)
  if type(err) == "string" then return err end
  local mt = getmetatable(err)
  if mt and mt.__tostring then return tostring(err) end
  return "(error object is a " .. type(err) .. " value)"
end

local function step(co, ok, err)
  if ok then
    if status(co) == "dead" then tasks[co] = nil end
    return
  end
  local handler = tasks[co]
  tasks[co] = nil
  local trace = traceback(co, message(err))
  if handler then
    handler(trace)
  else
    core.log("error in callback: " .. trace)
  end
end

-- Resumes a suspended coroutine of ours with the given values.
function _M.resume(co, ...)
  step(co, resume(co, ...))
end

-- Runs fn(...) in a new coroutine; handler(err) gets its error with a traceback, else it is logged.
function _M.spawn(fn, handler, ...)
  local co = create(fn)
  tasks[co] = handler or false
  step(co, resume(co, ...))
  return co
end

-- Suspends the calling coroutine for `ms` milliseconds without blocking the worker.
function _M.sleep(ms)
  local co = running()
  if co == nil or tasks[co] == nil then
    error("moonfork.sleep() can only be called from a request handler or a timer callback", 2)
  end
  if type(ms) ~= "number" or ms < 0 then error("moonfork.sleep(ms): ms must be a number >= 0", 2) end
  core.timer(ms, 0, function() _M.resume(co) end)
  return yield()
end

return _M
