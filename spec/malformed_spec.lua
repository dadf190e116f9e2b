-- spec/malformed_spec.lua: each kind of malformed request gets 400 and a closed connection, and the
-- worker (there is one) keeps serving new and existing connections.
local helpers = require "spec.helpers"

local CASES = {
  { name = "a bad request line",
    raw = "NOT A REQUEST LINE\r\n\r\n" },
  { name = "a request line with a bad HTTP version",
    raw = "GET / HTTP/x.y\r\nHost: 127.0.0.1\r\n\r\n" },
  { name = "a space before the colon of a header",
    raw = "GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n" },
  { name = "an invalid character in a header name",
    raw = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad\1Name: v\r\n\r\n" },
  { name = "conflicting Content-Length headers",
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc" },
  { name = "a non-numeric Content-Length",
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n" },
  { name = "a bad chunk size",
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n" },
  { name = "Transfer-Encoding together with Content-Length",
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
      .. "3\r\nabc\r\n0\r\n\r\n" },
}

describe("malformed requests", function()
  after_each(function()
    helpers.stop_all()
  end)

  for _, case in ipairs(CASES) do
    describe(case.name, function()
      it("answers 400 and closes the connection, and the worker keeps serving", function()
        local srv = helpers.start("app", { "--workers", "1", "--keepalive-timeout", "120" })
        -- a keep-alive client of the same worker, connected (and served) before the bad request
        local other = srv:connect()
        local before = helpers.json_decode(assert(other:request("GET", "/id")).body)

        local bad = srv:connect()
        bad:send(case.raw)
        local resp = assert(bad:receive())
        assert.are.equal(400, resp.status)
        assert.is_true(bad:closed_by_peer())

        -- a new connection to the same (only) worker
        local after = helpers.json_decode(assert(srv:get("/id")).body)
        assert.are.equal(before.pid, after.pid)
        -- the connection opened before the bad request still works
        local again = assert(other:request("GET", "/"))
        assert.are.equal(200, again.status)
        assert.are.equal("Hello, World!\n", again.body)
        -- nobody crashed or was respawned
        assert.are.equal(0, srv:count_log("respawning"))
      end)
    end)
  end

  describe("a good request followed by a bad one on the same connection", function()
    it("answers the good one with 200, then 400, then closes", function()
      local srv = helpers.start("app", { "--workers", "1" })
      local c = srv:connect()
      c:send(helpers.build_request("GET", "/") .. "NOT A REQUEST LINE\r\n\r\n")
      local good = assert(c:receive())
      assert.are.equal(200, good.status)
      assert.are.equal("Hello, World!\n", good.body)
      assert.are.equal(400, assert(c:receive()).status)
      assert.is_true(c:closed_by_peer())
    end)
  end)
end)
