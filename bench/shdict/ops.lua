-- bench/shdict/ops.lua: the shared-dict work both contestants do, the same Lua for each: `dict` is
-- moonfork.shared.bench or ngx.shared.bench (the same API). 1,000 keys of 32-byte values.
local ffi = require "ffi"

pcall(ffi.cdef, [[
struct bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct bench_timespec *ts);
]])
local ts = ffi.new("struct bench_timespec")
local KEYS = 1000
local VALUE = string.rep("v", 32)
local keys = {}
for i = 1, KEYS do keys[i] = "key:" .. i end

local _M = {}

-- CLOCK_MONOTONIC in seconds: the same clock in every process (both servers cache their own now()).
function _M.now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

function _M.fill(dict)
  for i = 1, KEYS do dict:set(keys[i], VALUE) end
  dict:set("n", 0)
end

-- n operations of one kind; returns a number so that nothing is optimised away.
local function run(dict, op, n, start)
  local hits = 0
  if op == "get" then
    for i = 1, n do
      if dict:get(keys[(start + i) % KEYS + 1]) then hits = hits + 1 end
    end
  elseif op == "set" then
    for i = 1, n do
      if dict:set(keys[(start + i) % KEYS + 1], VALUE) then hits = hits + 1 end
    end
  else
    for i = 1, n do
      hits = dict:incr("n", 1, 0)
    end
  end
  return hits
end
_M.run = run

-- One request's work: 100 operations.
local turn = 0
function _M.request(dict, op)
  turn = turn + 100
  return run(dict, op, 100, turn)
end

-- The timer loop: when the bench sets "go" to "OP N ID", every worker runs N operations once and
-- records "start:ID:PID" and "end:ID:PID" (seconds) and counts itself in "done:ID".
local seen = {}
function _M.poll(dict, pid)
  local go = dict:get("go")
  if not go or seen[go] then return end
  seen[go] = true
  local op, n, id = go:match("^(%a+) (%d+) (%w+)$")
  if not op then return end
  local t0 = _M.now()
  run(dict, op, tonumber(n), 0)
  local t1 = _M.now()
  dict:set("span:" .. id .. ":" .. pid, t0 .. " " .. t1)
  dict:incr("done:" .. id, 1, 0)
end

-- "S E" spans of the workers that finished round id, as one line.
function _M.result(dict, id)
  local out = {}
  for _, k in ipairs(dict:get_keys(0)) do
    if k:find("span:" .. id .. ":", 1, true) == 1 then out[#out + 1] = dict:get(k) end
  end
  return (dict:get("done:" .. id) or 0) .. "|" .. table.concat(out, ",")
end

return _M
