-- spec/chat_reload_timing.lua: how long a rolling reload of the chat takes, and how soon the chat
-- delivers again after it. Not a spec (no _spec suffix, no thresholds): a measurement to run by hand,
--   MOONFORK_BIN=build/moonfork lua spec/chat_reload_timing.lua [rounds] [--idle]
-- (from the repo root, with busted's lpath: LUA_PATH="./?.lua;./lua/?.lua;;").
-- Each round: SIGHUP at t0; "ready" = both new workers logged ready; "done" = "reload done"; then a
-- post on new worker 1 and the time until a long poll held on new worker 2 answers with it
-- ("deliver", from the post), and the time from t0 until that delivery ("total").
-- --idle holds an idle keep-alive connection on every old worker across the reload (as a browser does).
local helpers = require "spec.helpers"
local cjson = require "cjson"

helpers.POLL = 0.002
local rounds, idle = 5, false
for _, a in ipairs(arg) do
  if a == "--idle" then idle = true elseif tonumber(a) then rounds = tonumber(a) end
end

local CHAT = helpers.ROOT .. "/examples/chat/server.lua"
local srv = helpers.start_env(CHAT, { "--workers", "2", "--keepalive-timeout", "120" }, {})
local ok, err = pcall(function()
  local last = 0
  local function post(c, text)
    local r = assert(c:request("POST", "/messages", { { "Content-Type", "application/json" } },
      cjson.encode({ user = "timer", text = text })))
    assert(r.status == 201, r.body)
    return cjson.decode(r.body).id
  end
  -- warm up: one delivery before the first reload
  local c1 = helpers.conn_on(srv, 1, "/style.css", "HEAD")
  last = post(c1, "warm up")
  c1:close()
  local rows = {}
  for round = 1, rounds do
    local held = {}
    if idle then for id = 1, 2 do held[id] = helpers.conn_on(srv, id, "/style.css", "HEAD") end end
    local ready0, done0 = srv:count_log("worker %d+ %(pid %d+%) ready"), srv:count_log("reload done")
    local t0 = helpers.now()
    srv:signal("HUP")
    srv:wait_log("worker %d+ %(pid %d+%) ready", ready0 + 2, 60)
    local t_ready = helpers.now()
    srv:wait_log("reload done", done0 + 1, 60)
    local t_done = helpers.now()
    for _, c in pairs(held) do c:close() end
    -- a long poll on new worker 2, then a post on new worker 1
    local lp = helpers.conn_on(srv, 2, "/style.css", "HEAD")
    assert(lp:send(helpers.build_request("GET", "/poll?since=" .. last)))
    local pc = helpers.conn_on(srv, 1, "/style.css", "HEAD")
    local t_post = helpers.now()
    last = post(pc, "round " .. round)
    local r = assert(lp:receive())
    local t_got = helpers.now()
    local got = cjson.decode(r.body).messages
    if not (got[#got] and got[#got].id == last) then
      error("long poll (worker pid " .. tostring(helpers.worker_of(srv, lp)) .. ") answered without post " .. last
        .. ": " .. r.body .. "\nlog:\n" .. srv:log_text())
    end
    lp:close()
    pc:close()
    rows[#rows + 1] = { t_ready - t0, t_done - t0, t_got - t_post, t_got - t0 }
    print(string.format("round %d: ready %.3f s, done %.3f s, deliver %.3f s, total %.3f s", round,
      rows[#rows][1], rows[#rows][2], rows[#rows][3], rows[#rows][4]))
  end
  local function median(i)
    local v = {}
    for _, r in ipairs(rows) do v[#v + 1] = r[i] end
    table.sort(v)
    return v[math.floor((#v + 1) / 2)]
  end
  print(string.format("median of %d: ready %.3f s, done %.3f s, deliver %.3f s, total %.3f s", #rows,
    median(1), median(2), median(3), median(4)))
end)
srv:stop()
if not ok then
  io.stderr:write(tostring(err), "\n", srv:log_text(), "\n")
  os.exit(1)
end
