-- spec/body_stream_spec.lua: request bodies a handler reads while they arrive (issue 13 item 9):
-- req:read() returns pieces before the upload ends and keeps the worker's memory flat, req.body still
-- waits for a slow body, an unread body is dropped (or its connection closed) after the response,
-- pipelined requests behind a streamed body keep their order, and a client that leaves, is too slow
-- or sends too much is reported to the reader. Every wait is for a log line or a response, never a
-- fixed sleep.
local helpers = require "spec.helpers"
local socket = require "socket"

local MiB = 1024 * 1024

local function head(method, path, extra)
  return method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\n" .. (extra or "") .. "\r\n"
end

describe("request bodies read as they arrive", function()
  after_each(function() helpers.stop_all() end)

  describe("req:read()", function()
    it("returns pieces before the upload has ended", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Content-Length: 20000\r\n") .. string.rep("a", 10000)))
      -- the handler has a piece while half the body is still with the client
      local line = srv:wait_log("piece 1 of")
      assert.is_truthy(tonumber(line:match("(%d+) so far")) <= 10000, line)
      assert.is_true(c:quiet(0.05), "answered before the body was sent")
      assert(c:send(string.rep("b", 10000)))
      local r = assert(c:receive())
      assert.equal(200, r.status)
      assert.is_truthy(r.body:match("^read 20000 in %d+ pieces$"), r.body)
      -- the connection goes on
      assert.equal("Hello, World!\n", assert(c:request("GET", "/")).body)
    end)

    it("streams a chunked body, with the trailers after the last piece", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Transfer-Encoding: chunked\r\n") .. "5\r\nhello\r\n"))
      srv:wait_log("piece 1 of 5 bytes")
      assert(c:send("6\r\n world\r\n"))
      srv:wait_log("piece 2 of 6 bytes")
      assert(c:send("0\r\nX-Sum: 11\r\n\r\n"))
      local r = assert(c:receive())
      assert.equal("read 11 in 2 pieces sum=11", r.body)
    end)

    it("keeps the worker's memory flat through a 200 MiB upload", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1", "--max-body", "1g" })
      local pid = srv.workers[1]
      local rss0 = assert(helpers.rss_kib(pid))
      local c = srv:connect()
      local TOTAL, piece = 200 * MiB, string.rep("u", MiB)
      assert(c:send(head("POST", "/count", "Content-Length: " .. TOTAL .. "\r\n")))
      local peak = rss0
      for i = 1, TOTAL / MiB do
        assert(c:send(piece))
        if i % 8 == 0 then peak = math.max(peak, helpers.rss_kib(pid) or 0) end
      end
      local r = assert(c:receive())
      peak = math.max(peak, helpers.rss_kib(pid) or 0)
      assert.is_truthy(r.body:match("^read " .. TOTAL .. " in %d+ pieces$"), r.body)
      local grew = (peak - rss0) / 1024
      assert.is_true(grew < 24, string.format("worker RSS grew by %.1f MiB through a 200 MiB upload", grew))
    end)

    it("gives nil, \"closed\" when the client goes away mid-body", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Content-Length: 100000\r\n") .. string.rep("a", 1000)))
      srv:wait_log("piece 1 of")
      c:close()
      srv:wait_log("read error closed after 1000 bytes")
      assert.equal("Hello, World!\n", assert(srv:get("/")).body)
    end)

    it("gives nil, \"too large\" past --max-body, and the client gets a 413", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1", "--max-body", "100k" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Transfer-Encoding: chunked\r\n")
        .. string.format("%x\r\n%s\r\n", 60000, string.rep("a", 60000))))
      srv:wait_log("piece 1 of")
      assert(c:send(string.format("%x\r\n%s\r\n", 60000, string.rep("b", 60000))))
      local r = assert(c:receive())
      assert.equal(413, r.status)
      srv:wait_log("read error too large")
    end)

    it("gives nil, \"timeout\" when the next piece is later than --header-timeout, and the client a 408", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1", "--header-timeout", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Content-Length: 2000\r\n") .. string.rep("a", 1000)))
      srv:wait_log("piece 1 of")
      local r = assert(c:receive())
      assert.equal(408, r.status)
      srv:wait_log("read error timeout after 1000 bytes")
    end)

    it("answers Expect: 100-continue at the head, then streams the body", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Content-Length: 10\r\nExpect: 100-continue\r\n")))
      assert.equal(100, assert(c:receive()).status)
      assert(c:send("0123456789"))
      assert.equal("read 10 in 1 pieces", assert(c:receive()).body)
    end)

    it("refuses req.body once req:read() has begun", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/both", "Content-Length: 20\r\n") .. string.rep("a", 10)))
      local r = assert(c:receive())
      assert.is_truthy(r.body:find("first 10 then .*req.body: the body is being read with req:read%(%)"), r.body)
    end)
  end)

  describe("req.body", function()
    it("waits for a body that trickles in after the handler started", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/whole", "Content-Length: 300000\r\n") .. string.rep("a", 1000)))
      srv:wait_log("whole started")
      for _ = 1, 3 do
        assert.is_true(c:quiet(0.02), "answered before the body was whole")
        assert(c:send(string.rep("b", 99000) .. "c"))
        socket.sleep(0.01) -- (spreads the pieces over several reads; the verdict does not depend on it)
      end
      assert(c:send(string.rep("d", 300000 - 1000 - 3 * 99001)))
      local r = assert(c:receive())
      assert.equal("body 300000", r.body)
    end)
  end)

  describe("a body the handler does not read", function()
    it("is dropped after the response, and the connection serves the next request", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/ignore", "Content-Length: 20000\r\n") .. string.rep("a", 1000)))
      assert.equal("ignored", assert(c:receive()).body)
      assert(c:send(string.rep("b", 19000) .. head("GET", "/")))
      assert.equal("Hello, World!\n", assert(c:receive()).body)
    end)

    it("is dropped after a handler read part of it, chunked too", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/first", "Transfer-Encoding: chunked\r\n") .. "3\r\nabc\r\n"))
      assert.equal("first 3", assert(c:receive()).body)
      assert(c:send("4\r\ndefg\r\n0\r\n\r\n" .. head("GET", "/")))
      assert.equal("Hello, World!\n", assert(c:receive()).body)
    end)

    it("closes the connection after the response when it is over 1 MiB", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1", "--max-body", "64m" })
      local c = srv:connect()
      assert(c:send(head("POST", "/ignore", "Content-Length: " .. 10 * MiB .. "\r\n") .. string.rep("a", 1000)))
      local r = assert(c:receive())
      assert.equal("ignored", r.body)
      assert.is_true(c:closed_by_peer(), "the connection stayed open for a body it will not read")
      -- chunked: once more than 1 MiB of it has been dropped
      c = srv:connect()
      assert(c:send(head("POST", "/ignore", "Transfer-Encoding: chunked\r\n") .. "3\r\nabc\r\n"))
      assert.equal("ignored", assert(c:receive()).body)
      local chunk = string.format("%x\r\n%s\r\n", 65536, string.rep("z", 65536))
      for _ = 1, 17 do
        if not c:send(chunk) then break end -- (closed under our feet: what is checked next)
      end
      assert.is_true(c:closed_by_peer(), "the connection stayed open past 1 MiB of a dropped chunked body")
    end)
  end)

  describe("pipelining", function()
    it("answers a request sent behind a streamed body after it, in order", function()
      local srv = helpers.start("body_stream_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(head("POST", "/count?log=1", "Content-Length: 2000\r\n") .. string.rep("a", 1000)))
      srv:wait_log("piece 1 of")
      assert(c:send(string.rep("b", 1000) .. head("GET", "/") .. head("POST", "/whole", "Content-Length: 3\r\n")
        .. "xyz"))
      assert.equal("read 2000 in 2 pieces", assert(c:receive()).body)
      assert.equal("Hello, World!\n", assert(c:receive()).body)
      assert.equal("body 3", assert(c:receive()).body)
    end)
  end)
end)
