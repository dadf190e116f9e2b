-- spec/chat_reload_timing.lua: how long a rolling reload of the chat takes, and how soon the chat
-- delivers again after it. Not a spec (no _spec suffix, no thresholds): a measurement to run by hand,
-- from the repo root:
--   MOONFORK_BIN=build/moonfork LUA_PATH="./?.lua;./lua/?.lua;;" lua spec/chat_reload_timing.lua [rounds] [--idle|--busy]
-- Each round: SIGHUP at t0; "ready" = both new workers logged ready; "done" = "reload done"; then a
-- long poll on new worker 2 and a post on new worker 1: "post answered" is the POST's time to its 201,
-- "deliver" the time from the POST until the long poll answers with it, "total" t0 to that delivery.
-- --idle holds an idle keep-alive connection on every old worker across the reload (as a browser does).
-- --busy keeps every old worker draining after "reload done": each has a POST in flight (its body not
-- all sent) while the post and the long poll above run. When the long poll has no answer after
-- RELEASE_S seconds, the in-flight bodies are finished, the old workers exit, and the measurement goes
-- on ("released" is printed): that delivery waited for the old workers to exit.
local helpers = require "spec.helpers"
local cjson = require "cjson"

helpers.POLL = 0.002
local RELEASE_S = 5
local rounds, idle, busy = 5, false, false
for _, a in ipairs(arg) do
  if a == "--idle" then idle = true elseif a == "--busy" then busy = true elseif tonumber(a) then rounds = tonumber(a) end
end

local CHAT = helpers.ROOT .. "/examples/chat/server.lua"
local srv = helpers.start_env(CHAT, { "--workers", "2", "--keepalive-timeout", "120", "--grace", "60" },
  { CHAT_POLL_SECONDS = "60" })

local function post(c, text)
  local r = assert(c:request("POST", "/messages", { { "Content-Type", "application/json" } },
    cjson.encode({ user = "timer", text = text })))
  assert(r.status == 201, r.body)
  return cjson.decode(r.body).id
end

local function median(rows, i)
  local v = {}
  for _, r in ipairs(rows) do v[#v + 1] = r[i] end
  table.sort(v)
  return v[math.floor((#v + 1) / 2)]
end

local ok, err = pcall(function()
  local c1 = helpers.conn_on(srv, 1, "/style.css", "HEAD")
  local last = post(c1, "warm up")
  c1:close()
  local rows, exited = {}, 0
  for round = 1, rounds do
    local held = {}
    if idle or busy then for id = 1, 2 do held[id] = helpers.conn_on(srv, id, "/style.css", "HEAD") end end
    local body = cjson.encode({ user = "slow", text = "in flight " .. round })
    if busy then
      for id = 1, 2 do
        assert(held[id]:send("POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          .. "Content-Length: " .. #body .. "\r\n\r\n" .. body:sub(1, 5)))
      end
    end
    local function release()
      for _, c in pairs(held) do
        if busy then
          assert(c:send(body:sub(6)))
          local a = c:receive()
          if a and a.status == 201 then last = math.max(last, cjson.decode(a.body).id) end
        end
        c:close()
      end
      held = {}
    end
    local ready0, done0 = srv:count_log("worker %d+ %(pid %d+%) ready"), srv:count_log("reload done")
    local t0 = helpers.now()
    srv:signal("HUP")
    srv:wait_log("worker %d+ %(pid %d+%) ready", ready0 + 2, 60)
    local t_ready = helpers.now()
    srv:wait_log("reload done", done0 + 1, 60)
    local t_done = helpers.now()
    if not busy then release() end
    local lp = helpers.conn_on(srv, 2, "/style.css", "HEAD")
    assert(lp:send(helpers.build_request("GET", "/poll?since=" .. last)))
    local pc = helpers.conn_on(srv, 1, "/style.css", "HEAD")
    local t_post = helpers.now()
    local mine = post(pc, "round " .. round)
    local t_ack = helpers.now()
    local r = lp:receive({ timeout = RELEASE_S })
    if not r then
      print("round " .. round .. ": no delivery within " .. RELEASE_S .. " s while the old workers drain: released")
      release()
      r = assert(lp:receive())
    end
    local t_got = helpers.now()
    release()
    local got = cjson.decode(r.body).messages
    local found = false
    for _, m in ipairs(got) do if m.id == mine then found = true end end
    if not found then
      error("the long poll answered without post " .. mine .. ": " .. r.body .. "\nlog:\n" .. srv:log_text())
    end
    last = math.max(last, mine)
    for _, m in ipairs(got) do last = math.max(last, m.id) end
    lp:close()
    pc:close()
    exited = exited + 2
    srv:wait_log("exited with status 0 %(retired%)", exited, 60)
    rows[#rows + 1] = { t_ready - t0, t_done - t0, t_ack - t_post, t_got - t_post, t_got - t0 }
    print(string.format("round %d: ready %.3f s, done %.3f s, post answered %.3f s, deliver %.3f s, total %.3f s",
      round, (table.unpack or unpack)(rows[#rows])))
  end
  print(string.format("median of %d: ready %.3f s, done %.3f s, post answered %.3f s, deliver %.3f s, total %.3f s",
    #rows, median(rows, 1), median(rows, 2), median(rows, 3), median(rows, 4), median(rows, 5)))
end)
srv:stop()
if not ok then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
