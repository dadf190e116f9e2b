-- moonfork.sched: runs request handlers and timer callbacks in coroutines, and lets them sleep.
--
-- Coroutines are pooled: each runs a loop that calls one function under xpcall (LuaJIT can yield
-- across it), then parks itself in the pool until the next one. A request costs a resume, not a new
-- coroutine; a function that fails is reported by its error handler, and its coroutine is reused too.
local core = require "moonfork.core"

local create, resume, running, yield = coroutine.create, coroutine.resume, coroutine.running, coroutine.yield
local xpcall, traceback, tostring, type, getmetatable = xpcall, debug.traceback, tostring, type, getmetatable
local log = core.log

local _M = {}

local DONE = {}        -- what a pooled coroutine yields when its function has returned
local POOL_MAX = 256
local pool, npool = {}, 0
local ours = setmetatable({}, { __mode = "k" }) -- every coroutine made here (for sleep's check)

local function message(err)
  if type(err) == "string" then return err end
  local mt = getmetatable(err)
  if mt and mt.__tostring then return tostring(err) end
  return "(error object is a " .. type(err) .. " value)"
end

local function handler(err)
  return traceback(message(err), 2)
end

-- The body of every pooled coroutine. on_error(trace, a, b, c) gets a failure's message+traceback.
local function body(fn, a, b, c, on_error)
  while true do
    local ok, trace = xpcall(fn, handler, a, b, c)
    if not ok then
      if on_error then
        local ok2, err2 = xpcall(on_error, handler, trace, a, b, c)
        if not ok2 then log("error in an error handler: " .. tostring(err2)) end
      else
        log("error in callback: " .. trace)
      end
    end
    fn, a, b, c, on_error = nil, nil, nil, nil, nil -- let them go while parked
    fn, a, b, c, on_error = yield(DONE)
  end
end

local function park(co, ok, r)
  if ok then
    if r == DONE and npool < POOL_MAX then
      npool = npool + 1
      pool[npool] = co
    end
  else
    log("internal error in a coroutine: " .. tostring(r))
  end
end

-- Resumes a suspended coroutine of ours with the given values.
function _M.resume(co, ...)
  park(co, resume(co, ...))
end

-- Runs fn(a, b, c) in a coroutine (pooled); on_error(trace, a, b, c) gets its error with a traceback,
-- else the error is logged.
function _M.spawn(fn, on_error, a, b, c)
  local co
  if npool > 0 then
    co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
  else
    co = create(body)
    ours[co] = true
  end
  park(co, resume(co, fn, a, b, c, on_error))
  return co
end

-- Suspends the calling coroutine for `ms` milliseconds without blocking the worker.
function _M.sleep(ms)
  local co = running()
  if co == nil or not ours[co] then
    error("moonfork.sleep() can only be called from a request handler or a timer callback", 2)
  end
  if type(ms) ~= "number" or ms < 0 then error("moonfork.sleep(ms): ms must be a number >= 0", 2) end
  core.timer(ms, 0, function() _M.resume(co) end)
  return yield()
end

return _M
