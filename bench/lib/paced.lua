-- bench/lib/paced.lua: wrk script for the paced workload, hello keep-alive at the same offered load
-- for every contestant. Each connection waits a random 0 to 2 x BENCH_PACE_MS milliseconds (mean
-- BENCH_PACE_MS, default 2) before each request, so C connections offer about C / (pace + latency)
-- requests/s: about 43,000 with 100 connections, well under what nginx + Lua or moonfork serve on the
-- 2-core bench machine. At that load the latencies compare the servers' own delays; at saturation
-- (the hello workload) they mostly measure how wrk and the server share two cores.
local pace = tonumber(os.getenv("BENCH_PACE_MS") or "") or 2
local random = math.random

-- each thread has its own Lua state: seed each differently, so the threads' pauses do not march
-- in step
math.randomseed(tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 2147483647 + os.time())

function delay()
  return random(0, 2 * pace)
end
