-- spec/chat_reload_spec.lua: a message the chat acknowledged (201) during a rolling reload reaches
-- every worker, in one gap-free order, without a later post to pull it through. Posts go over
-- keep-alive connections opened before the reload (they stay on the retiring workers, like a
-- browser's or undici's idle connection), and over fresh ones, while SIGHUP replaces the workers and
-- the mesh leadership moves twice (to the other old worker, then to the first new one).
local helpers = require "spec.helpers"
local cjson = require "cjson"
local wsc = require "spec.ws_client"

local CHAT = os.getenv("CHAT_SPEC_SCRIPT") or (helpers.ROOT .. "/examples/chat/server.lua")
local decode = helpers.json_decode

local function start_chat(workers)
  return helpers.start_env(CHAT, { "--workers", tostring(workers), "--keepalive-timeout", "120" }, {})
end

-- POSTs over c; returns the id when the chat acknowledged it (201), nil when the connection was
-- closed by a retiring worker (not acknowledged: the client would retry).
local function try_post(c, text)
  local body = cjson.encode({ user = "reloader", text = text })
  local r = c:request("POST", "/messages", { { "Content-Type", "application/json" } }, body)
  if not r then return nil end
  assert.equal(201, r.status, r.body)
  return decode(r.body).id
end

-- The messages worker `id` lists from ?since=0 (over a new connection held by that worker).
local function list_on(srv, id)
  local c = helpers.conn_on(srv, id, "/style.css", "HEAD")
  local r = assert(c:request("GET", "/messages?since=0"))
  c:close()
  assert.equal(200, r.status, r.body)
  return decode(r.body).messages
end

local function missing_on(srv, id, acked)
  local have = {}
  for _, m in ipairs(list_on(srv, id)) do have[m.id] = m.text end
  local out = {}
  for mid, text in pairs(acked) do
    if have[mid] ~= text then out[#out + 1] = mid .. "=" .. tostring(have[mid]) .. "~=" .. text end
  end
  table.sort(out)
  return out
end

describe("chat reload", function()
  after_each(function() helpers.stop_all() end)

  -- One post per reload, then none: nothing later can pull a lost message through. The post goes over
  -- an idle keep-alive connection to old worker `on` once the log shows `at` (nil: right after SIGHUP).
  local points = { "1001", false, "retiring worker 1", "mesh leader: worker 2 %(pid %d+%), epoch", "retiring worker 2",
    "mesh leader: worker 1 %(pid %d+%), epoch", "reload done" }
  it("a post acknowledged at any point of a rolling reload reaches every new worker, alone, in order", function()
    local srv = start_chat(2)
    -- worker 2 a respawn (it joined late and synced from a peer), as in the browser run that lost one
    local pid2 = tonumber(srv:wait_log("worker 2 %(pid %d+%) ready"):match("worker 2 %(pid (%d+)%)"))
    assert.is_true(helpers.kill(pid2, "KILL"))
    srv:wait_log("worker 2 %(pid %d+%) ready", 2)
    local acked, n = {}, 0
    for round = 1, (tonumber(os.getenv("CHAT_RELOAD_ROUNDS")) or 2) * #points do
      local at, on = points[(round - 1) % #points + 1], math.floor((round - 1) / #points) % 2 + 1
      local old = {}
      for id = 1, 2 do old[id] = helpers.conn_on(srv, id, "/style.css", "HEAD") end
      -- a page's WebSocket on the worker it posts to: the reload closes it with 1001, then it posts
      local ws = at == "1001" and helpers.conn_on(srv, on, "/style.css", "HEAD")
      if ws then
        assert(ws:send(helpers.build_request("GET", "/ws?since=0", { { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
          { "Sec-WebSocket-Key", wsc.KEY }, { "Sec-WebSocket-Version", "13" } })))
        assert.equal(101, assert(ws:receive()).status)
      end
      local before = at and at ~= "1001" and srv:count_log(at) or 0
      local done_before = srv:count_log("reload done")
      srv:signal("HUP")
      if ws then
        repeat local f = assert(wsc.read_frame(ws)) until f.opcode == wsc.CLOSE
        ws:close()
      elseif at then
        srv:wait_log(at, before + 1, 30)
      end
      n = n + 1
      local text = "round " .. round .. " post " .. n
      local id = try_post(old[on], text)
      if not id then -- the retiring worker had closed it: post on a fresh connection
        local c = srv:connect()
        id = try_post(c, text)
        c:close()
      end
      assert.is_number(id, "round " .. round .. ": not acknowledged")
      assert.is_nil(acked[id], "id " .. id .. " acknowledged twice (" .. tostring(acked[id]) .. ", " .. text .. ")")
      acked[id] = text
      srv:wait_log("reload done", done_before + 1, 60)
      for _, c in ipairs(old) do c:close() end
      for wid = 1, 2 do
        local missing
        helpers.wait_for(function()
          missing = missing_on(srv, wid, acked)
          return #missing == 0
        end, 5)
        assert.are.same({}, missing, "round " .. round .. " (post at " .. tostring(at) .. " on old worker " .. on
          .. "): worker " .. wid .. " lacks acknowledged posts\nlog:\n" .. srv:log_text())
        for i, m in ipairs(list_on(srv, wid)) do
          assert.equal(i, m.id, "worker " .. wid .. ": ids not gap-free from 1")
        end
      end
    end
    if os.getenv("CHAT_RELOAD_DEBUG") then print(srv:log_text()) end
    assert.equal(0, srv:count_log("error"), srv:log_text())
  end)

  -- The old workers outlive the reload: each has a request in flight (a POST whose body is still
  -- coming), so they drain for as long as --grace allows. The new workers must not wait for them: a
  -- replacement shares the old worker's id, and a mesh stream to it once waited unread behind the
  -- stream to the old one until that one exited (the new leader's sync then gave up only after 2 s, and
  -- the other new worker heard nothing at all).
  it("delivers a post on one new worker to a client of the other while the old workers still drain", function()
    local srv = helpers.start_env(CHAT, { "--workers", "2", "--grace", "120" }, { CHAT_POLL_SECONDS = "120" })
    local old, busy = {}, {}
    local body = cjson.encode({ user = "slow", text = "sent during the reload" })
    for id = 1, 2 do
      busy[id] = helpers.conn_on(srv, id, "/style.css", "HEAD")
      old[id] = helpers.worker_of(srv, busy[id])
      assert(busy[id]:send("POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #body .. "\r\n\r\n" .. body:sub(1, 5)))
    end
    srv:signal("HUP")
    srv:wait_log("reload done", 1, 60)
    srv:wait_log("retiring %(replaced by a new worker%): 1 connection", 2, 30)
    local lp = helpers.conn_on(srv, 2, "/style.css", "HEAD")
    assert(lp:send(helpers.build_request("GET", "/poll?since=0")))
    local c = helpers.conn_on(srv, 1, "/style.css", "HEAD")
    local id = try_post(c, "while the old workers drain")
    assert.is_number(id)
    local r = assert(lp:receive(), "no answer to the long poll on new worker 2")
    local got = decode(r.body).messages
    assert.equal("while the old workers drain", got[#got] and got[#got].text, r.body)
    for wid = 1, 2 do
      assert.is_true(helpers.alive(old[wid]), "old worker " .. wid .. " had exited: the test proves nothing")
    end
    c:close(); lp:close()
    for id = 1, 2 do -- the old workers' posts end, are numbered by the new leader, and they exit
      assert(busy[id]:send(body:sub(6)))
      local a = assert(busy[id]:receive(), "no answer to the post on old worker " .. id)
      assert.equal(201, a.status, a.body)
      busy[id]:close()
    end
    assert(helpers.wait_gone(old, 30), "the old workers did not exit")
    assert.equal(0, srv:count_log("error"), srv:log_text())
  end)
end)
