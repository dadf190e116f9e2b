-- bench/db/pg_wrk.lua: wrk script for bench/db/pg-run: GET /item/N, N uniform in 1..BENCH_ROWS.
local rows = tonumber(os.getenv("BENCH_ROWS") or "10000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, rows))
end
