-- spec/websocket_chan_spec.lua: moonfork.websocket's channels (ws:subscribe, ws:unsubscribe,
-- websocket.publish) end to end against spec/fixtures/ws_chan_app.lua with raw frames
-- (spec/ws_client.lua): a publish reaches the channel's subscribers in every worker and no one else,
-- text and binary, compressed members and plain ones; unsubscribe; closed members leave; a member
-- that does not read is closed with 1008; bad arguments are errors. Real clients (Node's ws, inflating
-- what they get) are in spec/websocket_node_spec.lua.
local helpers = require "spec.helpers"
local wsc = require "spec.ws_client"
local cjson = require "cjson"

local frame, read_frame, read_close = wsc.frame, wsc.read_frame, wsc.read_close
local TEXT, BINARY = wsc.TEXT, wsc.BINARY

-- Upgrades an open HTTP connection (helpers.conn_on's, on a known worker) to a WebSocket at path.
local function upgrade_on(c, path, headers)
  local lines = { "GET " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
    "Sec-WebSocket-Key: " .. wsc.KEY, "Sec-WebSocket-Version: 13" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n"))
  local resp = assert(c:receive())
  assert.are.equal(101, resp.status)
  return c, resp
end

-- The next text frame's payload (pings skipped).
local function next_text(c, timeout)
  while true do
    local f, err = read_frame(c, timeout)
    if not f then return nil, err end
    if f.opcode == TEXT or f.opcode == BINARY then return f.payload, f end
  end
end

-- Asks the connection's worker something ("who", "unsub:NAME") and returns the answer.
local function ask(c, q)
  assert(c:send(frame(TEXT, q)))
  return assert(next_text(c))
end

describe("websocket channels", function()
  after_each(function() helpers.stop_all() end)

  local function get_json(srv, path)
    local resp = assert(srv:get(path))
    assert.are.equal(200, resp.status, resp.body)
    return cjson.decode(resp.body)
  end

  local function subscribers(srv, ch)
    return get_json(srv, "/subscribers?ch=" .. ch).subscribers
  end

  describe("publish", function()
    it("reaches the channel's subscribers in both workers, and not the members of another channel", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "2" })
      local a1 = upgrade_on(helpers.conn_on(srv, 1, "/probe"), "/sub?ch=room")
      local a2 = upgrade_on(helpers.conn_on(srv, 2, "/probe"), "/sub?ch=room&ch=lobby")
      local b1 = upgrade_on(helpers.conn_on(srv, 1, "/probe"), "/sub?ch=other")
      assert.are.equal("worker 1", ask(a1, "who"))
      assert.are.equal("worker 2", ask(a2, "who"))
      for i = 1, 3 do get_json(srv, "/publish?ch=room&m=hello" .. i) end
      for i = 1, 3 do
        assert.are.equal("hello" .. i, next_text(a1))
        assert.are.equal("hello" .. i, next_text(a2))
      end
      -- b1 got none of them: the first thing it reads is what was sent to its own channel after
      get_json(srv, "/publish?ch=other&m=yours")
      assert.are.equal("yours", next_text(b1))
      -- from a WebSocket on worker 2 to the subscribers of both
      assert(a2:send(frame(TEXT, "pub:lobby:only a2")))
      assert(a2:send(frame(TEXT, "pub:room:from a2")))
      assert.are.equal("only a2", next_text(a2))
      assert.are.equal("from a2", next_text(a2))
      assert.are.equal("from a2", next_text(a1))
    end)

    it("sends binary as binary frames, and an empty message as an empty frame", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "1" })
      local c = upgrade_on(srv:connect(), "/sub?ch=bin")
      get_json(srv, "/publish?ch=bin&m=%00%01%02&binary=1")
      get_json(srv, "/publish?ch=bin&m=")
      local data, f = next_text(c)
      assert.are.equal("\0\1\2", data)
      assert.are.equal(BINARY, f.opcode)
      data, f = next_text(c)
      assert.are.equal("", data)
      assert.are.equal(TEXT, f.opcode)
    end)

    it("compresses for members that negotiated permessage-deflate, and sends the same bytes to the others", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "1" })
      local plain = upgrade_on(srv:connect(), "/sub?ch=z")
      local own = upgrade_on(srv:connect(), "/sub?ch=z&compress=1", { ["Sec-WebSocket-Extensions"] = "permessage-deflate" })
      local ext = "permessage-deflate; server_no_context_takeover"
      local shared = {}
      for i = 1, 2 do
        local _, resp = upgrade_on(srv:connect(), "/sub?ch=z&compress=1", { ["Sec-WebSocket-Extensions"] = ext })
        assert.are.equal(ext, resp.headers["sec-websocket-extensions"])
        shared[i] = _
      end
      local msg = string.rep("the same message to everyone ", 40)
      for _ = 1, 2 do get_json(srv, "/publish?ch=z&m=" .. msg:gsub(" ", "+")) end
      for _ = 1, 2 do
        local data, f = next_text(plain)
        assert.are.equal(msg, data)
        assert.is_false(f.rsv1)
      end
      -- context takeover: the second copy refers back to the first, so it is smaller
      local _, o1 = next_text(own)
      local _, o2 = next_text(own)
      assert.is_true(o1.rsv1 and o2.rsv1)
      assert.is_true(#o1.payload < #msg / 4)
      assert.is_true(#o2.payload < #o1.payload)
      -- no context takeover: both copies are the same bytes, for both members (compressed once)
      local s = {}
      for i = 1, 2 do
        local _, f1 = next_text(shared[i])
        local _, f2 = next_text(shared[i])
        assert.is_true(f1.rsv1 and f2.rsv1)
        assert.are.equal(f1.payload, f2.payload)
        s[i] = f1.payload
      end
      assert.are.equal(s[1], s[2])
      assert.are.equal(o1.payload, s[1]) -- the first message: no context yet either way
    end)
    it("gives every member, in both workers, every message once and in order while the write order rotates", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "2" })
      local subs = {}
      for i = 1, 12 do subs[i] = upgrade_on(helpers.conn_on(srv, i % 2 + 1, "/probe"), "/sub?ch=order") end
      local pub1 = upgrade_on(helpers.conn_on(srv, 1, "/probe"), "/sub?ch=none")
      local pub2 = upgrade_on(helpers.conn_on(srv, 2, "/probe"), "/sub?ch=none")
      assert.are.equal(6, subscribers(srv, "order")) -- on the worker that answers; 6 on each
      -- 40 messages from a WebSocket on worker 1, then 40 from one on worker 2, then 40 over HTTP
      for k = 1, 40 do assert(pub1:send(frame(TEXT, "pub:order:" .. k))) end
      for k = 41, 80 do assert(pub2:send(frame(TEXT, "pub:order:" .. k))) end
      -- (each publisher's messages come in its order; wait for the first two series to arrive)
      for i, c in ipairs(subs) do
        local got1, got2 = {}, {}
        while #got1 + #got2 < 80 do
          local k = tonumber((assert(next_text(c))))
          local t = k <= 40 and got1 or got2
          t[#t + 1] = k
        end
        for j = 1, 40 do
          assert.are.equal(j, got1[j], "subscriber " .. i)
          assert.are.equal(40 + j, got2[j], "subscriber " .. i)
        end
      end
      -- over HTTP, one keep-alive connection to worker 1: publishes made on different workers have no
      -- order between them (a worker's own publish reaches its members before another worker's
      -- earlier one comes over the mesh), so a new connection per publish could see 96 before 95
      local hp = helpers.conn_on(srv, 1, "/probe")
      for k = 81, 120 do helpers.get_json(hp, "/publish?ch=order&m=" .. k) end
      for i, c in ipairs(subs) do
        for k = 81, 120 do assert.are.equal(tostring(k), next_text(c), "subscriber " .. i) end
      end
      helpers.get_json(hp, "/publish?ch=order&m=end") -- nothing extra came before it
      for _, c in ipairs(subs) do assert.are.equal("end", next_text(c)) end
    end)
  end)

  describe("membership", function()
    it("stops delivery after unsubscribe, and says whether the ws was a member", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "1" })
      local c = upgrade_on(srv:connect(), "/sub?ch=news")
      assert.are.equal("sub news false", ask(c, "sub:news")) -- a member already
      assert.are.equal(1, subscribers(srv, "news"))
      assert.are.equal("unsub news true", ask(c, "unsub:news"))
      assert.are.equal("unsub news false", ask(c, "unsub:news"))
      assert.are.equal(0, subscribers(srv, "news"))
      get_json(srv, "/publish?ch=news&m=missed")
      assert.are.equal("sub news true", ask(c, "sub:news"))
      get_json(srv, "/publish?ch=news&m=back")
      assert.are.equal("back", next_text(c))
    end)

    it("removes a member when its connection closes, by a close frame or a dropped TCP connection", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "1" })
      local a = upgrade_on(srv:connect(), "/sub?ch=room&ch=lobby")
      local b = upgrade_on(srv:connect(), "/sub?ch=room")
      local c = upgrade_on(srv:connect(), "/sub?ch=room")
      assert.are.equal(3, subscribers(srv, "room"))
      assert(a:send(frame(wsc.CLOSE, wsc.close_payload(1000))))
      assert(read_close(a))
      b:close()
      assert.is_true(helpers.wait_for(function() return subscribers(srv, "room") == 1 end))
      assert.are.equal(0, subscribers(srv, "lobby"))
      get_json(srv, "/publish?ch=room&m=still+here")
      assert.are.equal("still here", next_text(c))
      c:close()
      assert.is_true(helpers.wait_for(function() return subscribers(srv, "room") == 0 end))
      get_json(srv, "/publish?ch=room&m=nobody") -- a publish to a channel no one is in is fine
      srv:wait_log("subscriber closed 1000", 1)
    end)
  end)

  describe("a slow member", function()
    it("is closed with 1008 once its queue is over the high-water mark; the others get every message", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "1" })
      local slow = upgrade_on(srv:connect(), "/sub?ch=flood")
      local fast = upgrade_on(srv:connect(), "/sub?ch=flood")
      assert.are.equal(2, subscribers(srv, "flood"))
      -- 64 KiB messages, 4 at a time, read by `fast` as they come: `slow` reads nothing
      local n = 0
      local ok = helpers.wait_for(function()
        get_json(srv, "/publish?ch=flood&n=4&size=65536&m=m")
        for _ = 1, 4 do
          local data = assert(next_text(fast))
          assert.are.equal(65536, #data)
          n = n + 1
        end
        return subscribers(srv, "flood") == 1
      end, 60)
      assert.is_true(ok, "the slow member was not dropped")
      -- what slow reads now (it left the channel at once): the messages queued, then the close frame
      local f = assert(read_close(slow))
      assert.are.equal(1008, f.code)
      assert.are.equal("subscriber too slow", f.reason)
      srv:wait_log("subscriber closed 1008", 1)
      get_json(srv, "/publish?ch=flood&m=after")
      assert.are.equal("after", next_text(fast))
      assert.is_true(n > 4)
    end)
  end)

  describe("with --redis", function()
    local redis_server = require "spec.redis_server"
    local r
    setup(function() r = redis_server.start() end)
    teardown(function() redis_server.stop(r) end)

    it("reaches the subscribers on every server that shares the Redis, once each", function()
      local url = "redis://127.0.0.1:" .. r.port
      local a = helpers.start("ws_chan_app", { "--workers", "2", "--redis", url })
      local b = helpers.start("ws_chan_app", { "--workers", "1", "--redis", url })
      local on_a = upgrade_on(helpers.conn_on(a, 2, "/probe"), "/sub?ch=hosts")
      local on_b = upgrade_on(b:connect(), "/sub?ch=hosts")
      -- each worker's Redis subscription starts at its first subscribe: publish until one gets through
      local i = 0
      assert.is_true(helpers.wait_for(function()
        i = i + 1
        get_json(a, "/publish?ch=hosts&m=probe" .. i)
        local got = next_text(on_b, 0.2)
        return got ~= nil
      end, 20), "no publish reached the other server")
      local seen = 0
      assert.is_true(helpers.wait_for(function() -- and on_a's worker's subscription is up too
        get_json(b, "/publish?ch=hosts&m=ready" .. seen)
        seen = seen + 1
        local got = next_text(on_a, 0.2)
        while got and not got:find("^ready") do got = next_text(on_a, 0.2) end
        return got ~= nil
      end, 20))
      get_json(b, "/publish?ch=hosts&m=final")
      get_json(a, "/publish?ch=hosts&m=after")
      for _, c in ipairs { on_a, on_b } do
        local got = next_text(c)
        while got ~= "final" do got = assert(next_text(c)) end
        assert.are.equal("after", next_text(c)) -- once: no copy over the mesh as well
      end
    end)
  end)

  describe("misuse", function()
    it("raises for an empty or too long channel, data that is not a string, an unknown kind", function()
      local srv = helpers.start("ws_chan_app", { "--workers", "1" })
      local errs = get_json(srv, "/misuse")
      assert.truthy(errs[1]:find("the channel must be a string of 1 to 1024 bytes", 1, true), errs[1])
      assert.truthy(errs[2]:find("the channel must be a string of 1 to 1024 bytes", 1, true), errs[2])
      assert.truthy(errs[3]:find("data must be a string", 1, true), errs[3])
      assert.truthy(errs[4]:find("kind must be \"text\" or \"binary\"", 1, true), errs[4])
      assert.truthy(errs[5]:find("the channel must be", 1, true), errs[5])
      -- and the worker stays up
      assert.are.equal(0, subscribers(srv, "x"))
    end)
  end)
end)
