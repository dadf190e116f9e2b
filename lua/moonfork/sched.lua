-- moonfork.sched: runs every user callback in a pooled coroutine, and is the one way to wait.
--
-- Coroutines are pooled: each runs a loop that calls one function under xpcall (LuaJIT can yield
-- across it), then parks itself in the pool until the next one. A request costs a resume, not a new
-- coroutine; a function that fails is reported by its error handler, and its coroutine is reused too.
--
-- wait(ms, owner) suspends the caller until wake(co, ...), a timeout (nil, "timeout") or the
-- owner's close (nil, "closed"). The caller may be a coroutine the user made inside a callback (a
-- coroutine.wrap iterator): the worker's coroutine.resume/wrap are replaced so that a yield for the
-- scheduler (its first value is WAIT, which no user code can name) is passed up through every user
-- coroutine to the pooled one, and the scheduler's resume is passed back down to the waiter. User
-- yields go to their resumer as always; only user-made coroutines pay for the replacement.
local core = require "moonfork.core"
local timer = package.loaded["moonfork.core.timer"] or {} -- absent in the master, which never waits

local create, resume, running, yield, status, isyieldable = coroutine.create, coroutine.resume,
  coroutine.running, coroutine.yield, coroutine.status, coroutine.isyieldable
local xpcall, traceback, tostring, type, getmetatable, setmetatable, error, pairs, next, unpack =
  xpcall, debug.traceback, tostring, type, getmetatable, setmetatable, error, pairs, next, unpack
local log, start_timer, stop_timer, arm = core.log, timer.start, timer.stop, timer.arm
local now, frexp, ceil = core.now, math.frexp, math.ceil

local _M = {}

-- The longest wait: 2^31 ms (about 24.8 days), as browsers' setTimeout. `not (ms >= 0 and ms <= MAX_MS)`
-- also refuses NaN (every comparison with it is false) and infinity, which the timer could not hold.
local MAX_MS = 2 ^ 31
_M.MAX_MS = MAX_MS

local DONE = {}    -- what a pooled coroutine yields when its function has returned
local WAIT = {}    -- the first value of a yield meant for the scheduler
local WAITERS = {} -- the key of an owner's set of waiting coroutines
local POOL_MAX = 256
local pool, npool = {}, 0
local weak = { __mode = "k" }
local ours = setmetatable({}, weak)    -- every pooled coroutine
local parent = setmetatable({}, weak)  -- a user coroutine -> its resumer, while it runs or waits
local blocked = setmetatable({}, weak) -- coroutines suspended for the scheduler: not for user code to resume
local waiting = setmetatable({}, weak) -- a waiting coroutine -> the pooled coroutine to resume
local timeout = setmetatable({}, weak) -- a waiting coroutine -> the deadline bucket it is in
local owner_of = setmetatable({}, weak) -- a waiting coroutine -> the owner it waits on

local function message(err)
  if type(err) == "string" then return err end
  local mt = getmetatable(err)
  if mt and mt.__tostring then return tostring(err) end
  return "(error object is a " .. type(err) .. " value)"
end

local function handler(err)
  return traceback(message(err), 2)
end

-- Objects a callback opened and must not outlive it (sockets): pooled coroutine -> { [obj] = closer }.
local adopted = setmetatable({}, weak)
local spare_set = nil -- an emptied set, for the next adopt (a request with a pooled socket makes one)

local function release(co)
  local set = adopted[co]
  adopted[co] = nil
  for obj, closer in pairs(set) do
    set[obj] = nil
    local ok, err = xpcall(closer, handler, obj)
    if not ok then log("error closing what a callback left open: " .. tostring(err)) end
  end
  if next(set) == nil then spare_set = set end
end

-- The body of every pooled coroutine. on_error(trace, a, b, c) gets a failure's message+traceback.
local function body(fn, a, b, c, on_error)
  local me = running()
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
    if adopted[me] then release(me) end
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

-- For a caller in C that resumes pooled coroutines itself (bind_ws.c, a WebSocket's messages): a new
-- one, resumed with (fn, a, b, c, on_error) as spawn does; it yields DONE once fn has returned (ready
-- for the next), or waits like any other (the scheduler then owns it, and pools it when it is done).
function _M.runner()
  local co = create(body)
  ours[co] = true
  return co
end
_M.DONE = DONE

---------------------------------------------------------------------------------------------------
-- deadlines: one C timer for every timed wait and every after() of the worker
--
-- A wait that completes costs no timer at all: a deadline is an entry in a bucket (a table keyed by
-- the waiter), and cancelling it is `bucket[waiter] = nil`. Buckets are keyed by the loop time they
-- expire at, rounded up to a granule of 1 ms below 128 ms and 1/64 to 1/128 of the duration above
-- (a 60 s timeout shares its bucket with those of the next 512 ms), so a worker under load has a few
-- hundred buckets at most. A min-heap of the bucket keys says when the one C timer (bind_core.c,
-- timer.arm) must fire; it is moved only when a bucket earlier than the armed one appears. A deadline
-- fires at its time or up to one granule later, never earlier. The empty buckets of waits that
-- completed are dropped when their time comes.

local buckets = {}          -- key (loop ms) -> { [waiter] = true | fn }
local heap, nheap = {}, 0   -- the keys of buckets, a binary min-heap
local armed = nil           -- the key the C timer is armed for

local function heap_push(k)
  nheap = nheap + 1
  local i = nheap
  while i > 1 do
    local up = (i - i % 2) / 2
    local pk = heap[up]
    if pk <= k then break end
    heap[i] = pk
    i = up
  end
  heap[i] = k
end

local function heap_pop()
  local top, last = heap[1], heap[nheap]
  heap[nheap] = nil
  nheap = nheap - 1
  local n, i = nheap, 1
  if n == 0 then return top end
  while true do
    local c = 2 * i
    if c > n then break end
    local ck = heap[c]
    if c < n and heap[c + 1] < ck then
      c = c + 1
      ck = heap[c]
    end
    if last <= ck then break end
    heap[i] = ck
    i = c
  end
  heap[i] = last
  return top
end

-- The bucket for a deadline ms from now (created, and the C timer moved, when needed).
local function bucket_for(ms)
  local t = now()
  local key
  if ms < 128 then
    key = ceil(t + ms)
  else
    local _, e = frexp(ms)   -- ms < 2^e
    local g = 2 ^ (e - 7)    -- 1/64 to 1/128 of ms
    key = ceil((t + ms) / g) * g
  end
  local b = buckets[key]
  if b then return b end
  b = {}
  buckets[key] = b
  heap_push(key)
  if armed == nil or key < armed then
    armed = key
    arm(key - t)
  end
  return b
end

local function deadline_error(trace)
  log("error in a deadline callback: " .. trace)
end

-- The C timer fired: every bucket whose time has come is emptied.
local function sweep()
  armed = nil
  local t = now()
  local due, n = nil, 0
  while nheap > 0 and heap[1] <= t do
    local key = heap_pop()
    local b = buckets[key]
    buckets[key] = nil
    for w, fn in pairs(b) do
      due = due or {}
      due[n + 1], due[n + 2], due[n + 3] = w, fn, b
      n = n + 3
    end
  end
  if nheap > 0 then
    armed = heap[1]
    arm(armed - t)
  end
  for i = 1, n, 3 do
    local w, fn, b = due[i], due[i + 1], due[i + 2]
    if b[w] == fn then -- not cancelled by what ran before it in this sweep
      b[w] = nil
      if fn == true then
        timeout[w] = nil
        _M.wake(w, nil, "timeout")
      else
        _M.spawn(fn, deadline_error, w)
      end
    end
  end
end

-- fn(obj) runs in a pooled coroutine ms from now (up to a granule later, see above), unless
-- cancel(handle, obj) comes first. One deadline per obj at a time. Returns the handle.
function _M.after(ms, fn, obj)
  local b = bucket_for(ms)
  b[obj] = fn
  return b
end

function _M.cancel(handle, obj)
  handle[obj] = nil
end

---------------------------------------------------------------------------------------------------
-- one way to wait

local function root_of(co)
  while co and not ours[co] do co = parent[co] end
  return co
end

-- The calling coroutine and the pooled one its wait resumes; raises at the level of the caller of
-- `name` where a wait cannot reach the scheduler.
local function waiter(name)
  local co = running()
  local root = root_of(co)
  if not root then
    error(name .. " can only be called from a request handler, a timer or another moonfork callback", 3)
  end
  if not isyieldable() then error(name .. ": cannot wait inside a function called from C (sort, gsub...)", 3) end
  return co, root
end

local function suspend(co, root, ms, owner)
  if owner then
    local set = owner[WAITERS]
    if not set then
      set = {}
      owner[WAITERS] = set
    end
    set[co] = true
    owner_of[co] = owner
  end
  if ms then
    local b = bucket_for(ms)
    b[co] = true
    timeout[co] = b
  end
  waiting[co], blocked[co] = root, true
  return yield(WAIT, co)
end

-- Suspends the calling coroutine until wake(co, ...) (returns those values), `ms` milliseconds
-- (nil, "timeout"; no timeout when ms is nil) or close(owner) (nil, "closed"). Raises when called
-- outside a callback moonfork runs (the script's main chunk, a coroutine resumed from there).
function _M.wait(ms, owner)
  if ms ~= nil and (type(ms) ~= "number" or not (ms >= 0 and ms <= MAX_MS)) then
    error("sched.wait(ms): ms must be nil or a number from 0 to 2^31", 2)
  end
  if owner ~= nil and type(owner) ~= "table" then error("sched.wait(ms, owner): owner must be a table", 2) end
  local co, root = waiter("sched.wait()")
  return suspend(co, root, ms, owner)
end

-- closer(obj) runs when the callback the caller runs in (a handler, a timer...) returns, unless
-- disown(obj) came first; returns the pooled coroutine that owns obj (nil outside any callback).
function _M.adopt(obj, closer)
  local root = root_of(running())
  if not root then return nil end
  local set = adopted[root]
  if not set then
    set = spare_set or {}
    spare_set = nil
    adopted[root] = set
  end
  set[obj] = closer
  return root
end

function _M.disown(obj, root)
  local set = root and adopted[root]
  if set then set[obj] = nil end
end

-- Forgets co's wait (its timeout, its owner) without resuming it.
local function forget(co)
  waiting[co], blocked[co] = nil, nil
  local b = timeout[co]
  if b then
    timeout[co] = nil
    b[co] = nil
  end
  local owner = owner_of[co]
  if owner then
    owner_of[co] = nil
    local set = owner[WAITERS]
    if set then set[co] = nil end
  end
end

-- Resumes `co`, suspended in wait(), with the given values; false when it was not waiting.
local function wake(co, ...)
  local root = waiting[co]
  if not root or not blocked[root] then return false end
  forget(co)
  park(root, resume(root, ...))
  return true
end
_M.wake = wake

-- Wakes every coroutine waiting on `owner` with the given values.
function _M.notify(owner, ...)
  local set = owner[WAITERS]
  if not set then return end
  owner[WAITERS] = nil -- those who wait again from here on start a new set
  for co in pairs(set) do wake(co, ...) end
end

-- The owner is closed: every coroutine waiting on it gets nil, "closed". (The owner's own state tells
-- a later caller not to wait.)
function _M.close(owner)
  local set = owner[WAITERS]
  if set then _M.notify(owner, nil, "closed") end
end

-- Suspends the calling coroutine for `ms` milliseconds without blocking the worker.
function _M.sleep(ms)
  if type(ms) ~= "number" or not (ms >= 0 and ms <= MAX_MS) then
    error("moonfork.sleep(ms): ms must be a number from 0 to 2^31", 2)
  end
  local co, root = waiter("moonfork.sleep()")
  -- 0 must let the loop poll once (other requests, mesh messages): a deadline of "now" would come due
  -- again in the timer phase that is running, before any input is read. 1 ms is due after the poll.
  local _, err = suspend(co, root, ms > 0 and ms or 1)
  if err ~= nil and err ~= "timeout" then error(err, 2) end
end

---------------------------------------------------------------------------------------------------
-- timers: one `fire` callback for all, with the timer's target

local function timer_error(trace)
  log("error in timer callback: " .. trace)
end

local function run_job(job) -- job = { fn, n, arg1 .. argn }
  return job[1](unpack(job, 3, job[2] + 2))
end

local function fire(target)
  local kind = type(target)
  if kind == "function" then
    _M.spawn(target, timer_error)
  else
    _M.spawn(run_job, timer_error, target)
  end
end

-- Runs fn(...) in a pooled coroutine after ms, then every repeat_ms when given; returns the timer.
function _M.timer(ms, repeat_ms, fn, n, ...)
  if n == 0 then return start_timer(ms, repeat_ms, fn) end
  return start_timer(ms, repeat_ms, { fn, n, ... })
end

function _M.timer_stop(t)
  return stop_timer(t)
end

---------------------------------------------------------------------------------------------------
-- user coroutines: a yield for the scheduler goes up through them and comes back down

local function unblock(me, ...)
  blocked[me] = nil
  return ...
end

-- What resume(co) gave; a yield for the scheduler is passed up (this coroutine yields it to its own
-- resumer), and what the scheduler resumes this one with goes down to co. Where this coroutine cannot
-- yield (co was resumed from inside a C function), the waiter is told at once instead.
local function passed(co, ok, first, waiter, ...)
  if ok and first == WAIT then
    if not isyieldable() then
      forget(waiter)
      return passed(co, resume(co, nil, "moonfork: cannot wait in a coroutine resumed from C (sort, gsub...)"))
    end
    local me = running()
    blocked[me] = true
    return passed(co, resume(co, unblock(me, yield(WAIT, waiter))))
  end
  parent[co] = nil
  return ok, first, waiter, ...
end

local function co_resume(co, ...)
  if blocked[co] then return false, "cannot resume non-suspended coroutine" end
  if status(co) ~= "suspended" then return resume(co, ...) end -- its own error
  parent[co] = running()
  return passed(co, resume(co, ...))
end

local function wrapped(ok, ...)
  if not ok then error((...), 0) end
  return ...
end

local function co_wrap(fn)
  local co = create(fn)
  return function(...) return wrapped(co_resume(co, ...)) end
end

local function co_status(co)
  if blocked[co] then return "normal" end
  return status(co)
end

-- In a worker (the master never runs callbacks): the replaced coroutine functions, and the timers'
-- one callback. luastate.c loads this module before the script, so a script that keeps its own
-- reference to coroutine.resume gets the replaced one.
if core.role == "worker" then
  coroutine.resume, coroutine.wrap, coroutine.status = co_resume, co_wrap, co_status
  timer.on { fire = fire, sweep = sweep }
end

return _M
