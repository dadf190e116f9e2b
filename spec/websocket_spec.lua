-- spec/websocket_spec.lua: moonfork.websocket end to end with raw frames (spec/ws_client.lua) against
-- spec/fixtures/ws_app.lua: the handshake and its refusals, RFC 6455's frame cases (fragments with
-- control frames between them, unmasked frames, bad UTF-8 across fragments, oversized messages,
-- reserved bits and opcodes, bad close codes), permessage-deflate (RFC 7692's own examples and a
-- bomb), the close handshake both ways, the idle timeout, automatic pings, and 1001 on a reload.
local helpers = require "spec.helpers"
local wsc = require "spec.ws_client"
local cjson = require "cjson"

local frame, read_frame, read_close = wsc.frame, wsc.read_frame, wsc.read_close
local TEXT, BINARY, CONT, CLOSE, PING, PONG = wsc.TEXT, wsc.BINARY, wsc.CONT, wsc.CLOSE, wsc.PING, wsc.PONG

describe("websocket", function()
  local srv

  before_each(function()
    srv = helpers.start("ws_app", { "--workers", "1" })
  end)

  after_each(function()
    helpers.stop_all()
  end)

  local function events()
    local resp = assert(srv:get("/events"))
    return cjson.decode(resp.body)
  end

  -- The script heard a close with this "code reason" line.
  local function script_heard(line)
    return helpers.wait_for(function()
      for _, l in ipairs(events().closes) do
        if l == line then return true end
      end
    end)
  end

  local function open(path, headers)
    local c, resp = wsc.open(srv.port, path or "/plain", headers)
    assert.are.equal(101, resp.status)
    return c, resp
  end

  -- The server fails the connection with `code`, then closes the TCP connection.
  local function fails_with(c, code)
    local f = assert(read_close(c))
    assert.are.equal(code, f.code)
    assert.is_true(c:closed_by_peer())
    assert.is_true(script_heard(code .. " "))
  end

  describe("the handshake", function()
    it("answers 101 with the accept key, Upgrade and Connection, and the subprotocol the server prefers", function()
      local _, resp = open("/echo", { ["Sec-WebSocket-Protocol"] = "superchat, chat", Origin = "http://example.com" })
      assert.are.equal(wsc.ACCEPT, resp.headers["sec-websocket-accept"])
      assert.are.equal("websocket", resp.headers["upgrade"]:lower())
      assert.are.equal("upgrade", resp.headers["connection"]:lower())
      assert.are.equal("chat", resp.headers["sec-websocket-protocol"])
      assert.is_nil(resp.headers["sec-websocket-extensions"]) -- not asked for
      local e = events()
      assert.are.equal("http://example.com", e.origin)
      assert.are.equal("chat", e.protocol)
    end)

    it("picks no subprotocol when the client offers none of the server's", function()
      local _, resp = open("/echo", { ["Sec-WebSocket-Protocol"] = "mqtt" })
      assert.is_nil(resp.headers["sec-websocket-protocol"])
      assert.are.equal("", events().protocol)
    end)

    it("refuses another version with 426 and Sec-WebSocket-Version: 13, and upgrade returns nil, err", function()
      local _, resp = wsc.open(srv.port, "/plain", { ["Sec-WebSocket-Version"] = "8" })
      assert.are.equal(426, resp.status)
      assert.are.equal("13", resp.headers["sec-websocket-version"])
      assert.is_truthy(events().refused:find("version", 1, true))
    end)

    local bad = {
      { "no key", { ["Sec-WebSocket-Key"] = false } },
      { "a key that is not 16 bytes of base64", { ["Sec-WebSocket-Key"] = "c2hvcnQ=" } },
      { "no Upgrade: websocket", { Upgrade = "h2c" } },
      { "no Connection: Upgrade", { Connection = "keep-alive" } },
    }
    for _, case in ipairs(bad) do
      it("refuses a request with " .. case[1] .. " with 400", function()
        local c, resp = wsc.open(srv.port, "/plain", case[2])
        assert.are.equal(400, resp.status)
        c:close()
        assert.is_truthy(events().refused)
      end)
    end

    it("refuses a POST with 400", function()
      local _, resp = wsc.open(srv.port, "/plain", { ["Content-Length"] = "0" }, { method = "POST" })
      assert.are.equal(400, resp.status)
    end)
  end)

  describe("messages", function()
    it("echoes text and binary messages in each length form (7-, 16- and 64-bit)", function()
      local c = open("/big")
      for _, n in ipairs { 0, 5, 125, 126, 65535, 65536, 200000 } do
        local data = string.rep("x", n)
        c:send(frame(n % 2 == 0 and TEXT or BINARY, data))
        local f = assert(read_frame(c))
        assert.are.equal(n % 2 == 0 and TEXT or BINARY, f.opcode)
        assert.is_false(f.masked)
        assert.are.equal(n, #f.payload)
      end
    end)

    it("reassembles a fragmented message, answering a ping sent between its fragments first", function()
      local c = open()
      c:send(frame(TEXT, "Hel", { fin = false }) .. frame(PING, "p1") .. frame(CONT, "lo, ", { fin = false })
        .. frame(PONG, "unasked") .. frame(CONT, "world"))
      local pong = assert(read_frame(c))
      assert.are.equal(PONG, pong.opcode)
      assert.are.equal("p1", pong.payload)
      local f = assert(read_frame(c))
      assert.are.equal(TEXT, f.opcode)
      assert.are.equal("Hello, world", f.payload)
    end)

    it("hands the script frames the client sent in the same packet as its request", function()
      local c, resp = wsc.open(srv.port, "/plain", {}, { early = frame(TEXT, "early") .. frame(TEXT, "bird") })
      assert.are.equal(101, resp.status)
      assert.are.equal("early", assert(read_frame(c)).payload)
      assert.are.equal("bird", assert(read_frame(c)).payload)
    end)

    it("takes a frame that arrives a byte at a time", function()
      local c = open()
      local bytes = frame(TEXT, string.rep("ab", 100))
      for i = 1, #bytes do c:send(bytes:sub(i, i)) end
      assert.are.equal(string.rep("ab", 100), assert(read_frame(c)).payload)
    end)

    it("accepts a character split across fragments", function()
      local c = open()
      c:send(frame(TEXT, "\xce", { fin = false }) .. frame(CONT, "\xba\xe1\xbd", { fin = false }) .. frame(CONT, "\xb9"))
      assert.are.equal("\xce\xba\xe1\xbd\xb9", assert(read_frame(c)).payload)
    end)

    it("sends a ping from ws:ping(data) and takes the client's pong without bothering the script", function()
      local c = open()
      c:send(frame(TEXT, "ping"))
      local f = assert(read_frame(c))
      assert.are.equal(PING, f.opcode)
      assert.are.equal("hi", f.payload)
      c:send(frame(PONG, "hi") .. frame(TEXT, "after"))
      assert.are.equal("after", assert(read_frame(c)).payload)
    end)

    it("runs message callbacks in coroutines that may wait, in order", function()
      local c = open()
      c:send(frame(TEXT, "sleep"))
      assert.are.equal("slept", assert(read_frame(c)).payload)
    end)
  end)

  describe("listeners", function()
    local function replies(c, n)
      local got = {}
      for i = 1, n do got[i] = assert(read_frame(c)).payload end
      return table.concat(got, ",")
    end

    it("hears a pipelined burst in order while some listeners wait, and each of them answers", function()
      local c = open("/burst")
      c:send(frame(TEXT, "wait:40") .. frame(TEXT, "a") .. frame(TEXT, "wait:10") .. frame(TEXT, "b") .. frame(TEXT, "c"))
      -- the listeners that do not wait answer at once, those that wait when they wake, shortest first
      assert.are.equal("a,b,c,waited:10,waited:40", replies(c, 5))
      assert.are.equal("wait:40,a,wait:10,b,c", events().burst)
      c:send(frame(TEXT, "after"))
      assert.are.equal("after", assert(read_frame(c)).payload)
    end)

    it("logs a listener that raises, answers the messages around it, and keeps the connection open", function()
      local other = open("/burst")
      local c = open("/burst")
      c:send(frame(TEXT, "a") .. frame(TEXT, "boom") .. frame(TEXT, "b"))
      assert.are.equal("a,b", replies(c, 2))
      srv:wait_log("error in websocket 'message' callback: .*boom in a listener")
      c:send(frame(TEXT, "still open"))
      assert.are.equal("still open", assert(read_frame(c)).payload)
      other:send(frame(TEXT, "other"))
      assert.are.equal("other", assert(read_frame(other)).payload)
      assert.are.equal(2, events().open)
    end)

    it("sends what a listener sent before it raised, with the answers gathered from the same read", function()
      local c = open("/burst")
      c:send(frame(TEXT, "x") .. frame(TEXT, "send+boom") .. frame(TEXT, "y"))
      assert.are.equal("x,sent,y", replies(c, 3))
      srv:wait_log("error in websocket 'message' callback: .*boom after a send")
    end)

    it("logs a listener that raises after it waited, and the next messages are heard as before", function()
      local c = open("/burst")
      c:send(frame(TEXT, "wait+boom") .. frame(TEXT, "p"))
      assert.are.equal("p", assert(read_frame(c)).payload)
      srv:wait_log("error in websocket 'message' callback: .*boom after a wait")
      for i = 1, 20 do c:send(frame(TEXT, "q" .. i)) end
      local want = {}
      for i = 1, 20 do want[i] = "q" .. i end
      assert.are.equal(table.concat(want, ","), replies(c, 20))
    end)
  end)

  describe("backpressure and misuse", function()
    it("returns false from ws:send over the high-water mark, then emits drain once the client reads", function()
      local c = open("/flood")
      local flood
      assert.is_truthy(helpers.wait_for(function()
        flood = events().flood
        return flood
      end))
      assert.is_true(flood < 10000, "ws:send never returned false")
      for _ = 1, flood do
        local f = assert(read_frame(c))
        assert.are.equal(BINARY, f.opcode)
        assert.are.equal(16384, #f.payload)
      end
      local f = assert(read_frame(c))
      assert.are.equal("drained", f.payload)
      assert.is_true(events().drained)
    end)

    it("raises clear errors for bad options, close codes and data, and answers nil, \"closed\" after close", function()
      local c = open("/misuse")
      local f = assert(read_close(c))
      assert.are.equal(1000, f.code)
      local e = events()
      assert.is_truthy(e.bad_option:find("maxPayload", 1, true))
      assert.is_truthy(e.bad_code:find("code must be", 1, true))
      assert.is_truthy(e.bad_data:find("must be a string", 1, true))
      assert.are.equal("nil closed", e.after_close)
      assert.is_truthy(e.bad_field:find("takes no fields of its own", 1, true))
    end)
  end)

  describe("protocol errors", function()
    local cases = {
      { "an unmasked frame", 1002, function() return frame(TEXT, "hi", { unmasked = true }) end },
      { "text that is not UTF-8, split across fragments", 1007,
        function() return frame(TEXT, "ok \xce", { fin = false }) .. frame(CONT, "\xba\xed\xa0\x80") end },
      { "text that ends inside a character", 1007, function() return frame(TEXT, "\xe2\x82") end },
      { "a message over maxPayload", 1009, function() return frame(BINARY, string.rep("x", 65537)) end },
      { "fragments that add up to over maxPayload", 1009,
        function() return frame(BINARY, string.rep("x", 40000), { fin = false }) .. frame(CONT, string.rep("x", 40000)) end },
      { "RSV2 set", 1002, function() return frame(TEXT, "hi", { rsv = 2 }) end },
      { "RSV1 without permessage-deflate", 1002, function() return frame(TEXT, "hi", { rsv = 4 }) end },
      { "opcode 3", 1002, function() return frame(3, "") end },
      { "opcode 11", 1002, function() return frame(11, "") end },
      { "a ping of 126 bytes", 1002, function() return frame(PING, string.rep("p", 126)) end },
      { "a fragmented ping", 1002, function() return frame(PING, "p", { fin = false }) end },
      { "a continuation with no message", 1002, function() return frame(CONT, "x") end },
      { "a new message inside a fragmented one", 1002,
        function() return frame(TEXT, "a", { fin = false }) .. frame(TEXT, "b") end },
      { "a close payload of 1 byte", 1002, function() return frame(CLOSE, "\3") end },
      { "close code 1005", 1002, function() return frame(CLOSE, wsc.close_payload(1005)) end },
      { "close code 999", 1002, function() return frame(CLOSE, wsc.close_payload(999)) end },
      { "close code 2000", 1002, function() return frame(CLOSE, wsc.close_payload(2000)) end },
      { "a close reason that is not UTF-8", 1007, function() return frame(CLOSE, wsc.close_payload(1000, "\xff")) end },
    }
    for _, case in ipairs(cases) do
      it("closes with " .. case[2] .. " on " .. case[1], function()
        local c = open()
        c:send(case[3]())
        fails_with(c, case[2])
      end)
    end

    it("stays up and serves new connections after all that", function()
      local c = open()
      c:send(frame(3, ""))
      fails_with(c, 1002)
      local d = open()
      d:send(frame(TEXT, "still here"))
      assert.are.equal("still here", assert(read_frame(d)).payload)
    end)
  end)

  describe("the close handshake", function()
    it("echoes the client's close code, closes the TCP connection, and the script hears code and reason", function()
      local c = open()
      c:send(frame(CLOSE, wsc.close_payload(1000, "bye")))
      local f = assert(read_close(c))
      assert.are.equal(1000, f.code)
      assert.is_true(c:closed_by_peer())
      assert.is_true(script_heard("1000 bye"))
    end)

    it("answers a close without a code with an empty close; the script hears 1005", function()
      local c = open()
      c:send(frame(CLOSE, ""))
      local f = assert(read_close(c))
      assert.are.equal("", f.payload)
      assert.is_true(script_heard("1005 "))
    end)

    it("starts it from ws:close(code, reason) and ends it when the client answers", function()
      local c = open()
      c:send(frame(TEXT, "close:4000:done"))
      local f = assert(read_close(c))
      assert.are.equal(4000, f.code)
      assert.are.equal("done", f.reason)
      c:send(frame(TEXT, "ignored after the close"))
      c:send(frame(CLOSE, wsc.close_payload(4000)))
      assert.is_true(c:closed_by_peer())
      assert.is_true(script_heard("4000 done"))
    end)

    it("tells the script 1006 when the TCP connection dies without a close frame", function()
      local c = open()
      c:send(frame(TEXT, "x"))
      assert(read_frame(c))
      c:close()
      assert.is_true(script_heard("1006 "))
      assert.is_true(helpers.wait_for(function() return events().open == 0 end))
    end)
  end)

  describe("permessage-deflate", function()
    local offer = { ["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits" }

    it("is negotiated when the script asks for compress and the client offers it", function()
      local _, resp = open("/echo", offer)
      assert.are.equal("permessage-deflate", resp.headers["sec-websocket-extensions"])
      assert.are.equal("true", events().compressed)
    end)

    it("is not negotiated when the script did not ask for it", function()
      local _, resp = open("/plain", offer)
      assert.is_nil(resp.headers["sec-websocket-extensions"])
    end)

    it("takes server_no_context_takeover and server_max_window_bits", function()
      local _, resp = open("/echo", { ["Sec-WebSocket-Extensions"] = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10" })
      assert.are.equal("permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        resp.headers["sec-websocket-extensions"])
    end)

    it("inflates RFC 7692's examples: compressed, fragmented, and a stored block", function()
      local c = open("/echo", offer)
      c:send(frame(TEXT, "\xf2\x48\xcd\xc9\xc9\x07\x00", { rsv = 4 })) -- §7.2.3.1
      assert.are.equal("Hello", assert(read_frame(c)).payload)
      c:send(frame(TEXT, "\xf2\x48\xcd", { rsv = 4, fin = false }) .. frame(CONT, "\xc9\xc9\x07\x00"))
      assert.are.equal("Hello", assert(read_frame(c)).payload)
      c:send(frame(TEXT, "\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00", { rsv = 4 })) -- §7.2.3.3
      assert.are.equal("Hello", assert(read_frame(c)).payload)
      c:send(frame(TEXT, "uncompressed")) -- RSV1 clear: a message sent as it is
      assert.are.equal("uncompressed", assert(read_frame(c)).payload)
    end)

    it("compresses what it sends (RSV1 set, smaller than the message)", function()
      local c = open("/echo", offer)
      local msg = string.rep("compress me please ", 50)
      c:send(frame(TEXT, msg))
      local f = assert(read_frame(c))
      assert.is_true(f.rsv1)
      assert.is_true(#f.payload < #msg / 4)
    end)

    it("closes with 1009 on a compression bomb (300 bytes that inflate to 300 KB, maxPayload 64k)", function()
      local c = open("/echo", offer)
      local bomb = "\xec\xc1\x01\x0d\x00\x00\x00\xc2\xa0\xf7\x4f\x6d\x0f\x07\x14" .. string.rep("\0", 290) .. "\xfc\x18\x00"
      c:send(frame(BINARY, bomb, { rsv = 4 }))
      fails_with(c, 1009)
    end)

    it("closes with 1002 on RSV1 on a continuation frame", function()
      local c = open("/echo", offer)
      c:send(frame(TEXT, "\xf2\x48\xcd", { rsv = 4, fin = false }) .. frame(CONT, "\xc9\xc9\x07\x00", { rsv = 4 }))
      fails_with(c, 1002)
    end)

    it("closes with 1007 on data that is not deflate", function()
      local c = open("/echo", offer)
      c:send(frame(TEXT, "\xff\xff\xff\xff", { rsv = 4 }))
      fails_with(c, 1007)
    end)
  end)

  describe("the ws object", function()
    it("lets the script drop its ws: the connection and its listeners live on after a full GC", function()
      local c = open("/dropped")
      assert(srv:get("/events?gc=1"))
      c:send(frame(TEXT, "still here"))
      assert.is_true(helpers.wait_for(function() return events().dropped == "still here" end))
      assert.are.equal(1, events().open)
    end)

    it("runs a close listener registered after the close at once, with the code and reason", function()
      local c = open("/late")
      c:send(frame(TEXT, "bye"))
      local f = assert(read_close(c))
      assert.are.equal(4000, f.code)
      c:send(frame(CLOSE, wsc.close_payload(4000)))
      assert.is_true(c:closed_by_peer())
      c:close()
      assert.is_true(helpers.wait_for(function() return events().open == 0 end))
      assert.is_true(helpers.wait_for(function()
        local resp = assert(srv:get("/events?late=1"))
        return cjson.decode(resp.body).late == "4000 later"
      end))
    end)
  end)

  describe("memory", function()
    it("stays bounded over many compressed, fragmented connections opened and closed", function()
      local offer = { ["Sec-WebSocket-Extensions"] = "permessage-deflate" }
      local long = string.rep("compress me please ", 100)
      local function rounds(n)
        for _ = 1, n do
          local c = open("/echo", offer)
          c:send(frame(TEXT, "\xf2\x48\xcd", { rsv = 4, fin = false }) .. frame(CONT, "\xc9\xc9\x07\x00") .. frame(TEXT, long))
          assert.are.equal("Hello", assert(read_frame(c)).payload)
          assert.is_true(assert(read_frame(c)).rsv1) -- the server made its compressor
          c:send(frame(CLOSE, wsc.close_payload(1000)))
          assert(read_close(c))
          assert.is_true(c:closed_by_peer())
          c:close()
        end
      end
      rounds(200)
      assert.is_true(helpers.wait_for(function() return events().open == 0 end))
      local before = helpers.rss_kib(srv.workers[1])
      rounds(1000)
      assert.is_true(helpers.wait_for(function() return events().open == 0 end))
      local after = helpers.rss_kib(srv.workers[1])
      -- a zlib state kept per connection would be about 300 KiB each: 300 MiB here
      assert.is_true(after - before < 4096, ("RSS grew from %d to %d KiB"):format(before, after))
    end)
  end)

  describe("timeouts", function()
    it("closes with 1001 a connection the client leaves quiet past idleTimeout", function()
      local c = open("/idle")
      local f = assert(read_close(c, 10))
      assert.are.equal(1001, f.code)
      c:send(frame(CLOSE, wsc.close_payload(1001)))
      assert.is_true(c:closed_by_peer())
      assert.is_true(script_heard("1001 idle timeout"))
    end)

    it("pings a quiet client every pingInterval, and a client that answers stays open past idleTimeout", function()
      local c = open("/pinger")
      local started = helpers.now()
      local pings = 0
      while helpers.now() - started < 2 do -- past idleTimeout (1.5 s)
        local f = assert(read_frame(c, 5))
        assert.are.equal(PING, f.opcode)
        pings = pings + 1
        c:send(frame(PONG, f.payload))
      end
      assert.is_true(pings >= 2)
      c:send(frame(TEXT, "alive"))
      local f = assert(read_frame(c))
      while f.opcode == PING do f = assert(read_frame(c)) end
      assert.are.equal("alive", f.payload)
    end)
  end)

  describe("draining", function()
    it("closes every WebSocket with 1001 on a reload, and the old worker exits once they are gone", function()
      local a, b = open(), open("/echo")
      local old = srv.workers[1]
      srv:signal("HUP")
      for _, c in ipairs { a, b } do assert.are.equal(1001, assert(read_close(c)).code) end
      assert.is_true(helpers.alive(old)) -- waiting for the close handshakes
      for _, c in ipairs { a, b } do
        c:send(frame(CLOSE, wsc.close_payload(1001)))
        assert.is_true(c:closed_by_peer())
      end
      srv:wait_log("reload done")
      assert.is_true(helpers.wait_gone({ old }))
      assert.are.equal(2, srv:count_log("websocket closed 1001 going away"))
      local d = open() -- the new worker serves
      d:send(frame(TEXT, "new"))
      assert.are.equal("new", assert(read_frame(d)).payload)
    end)

    it("does not wait past --grace for a client that never answers the close", function()
      helpers.stop_all()
      srv = helpers.start("ws_app", { "--workers", "1", "--grace", "0.5" })
      local c = open()
      local worker = srv.workers[1]
      srv:signal("TERM")
      assert.are.equal(1001, assert(read_close(c)).code) -- and no answer: the close wait is 3 s
      srv:wait_log("grace period over")
      assert.is_true(helpers.wait_gone({ worker }))
    end)
  end)
end)
