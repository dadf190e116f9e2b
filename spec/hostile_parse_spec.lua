-- spec/hostile_parse_spec.lua: requests a hostile client crafts to get past the parser (issue 13:
-- obs-fold smuggling, Transfer-Encoding, Host, the request line, chunk extensions) are refused with
-- their status and a closed connection; a smuggled request never runs; the worker keeps serving.
local helpers = require "spec.helpers"

local SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

-- Each is refused: its status, then the connection closes with nothing more (no second response).
local REFUSED = {
  -- 2. obs-fold: a header line beginning with SP or HTAB (CVE-2024-27982)
  { name = "obs-fold hiding a Content-Length (the smuggling pattern)", status = 400,
    raw = "POST /json HTTP/1.1\r\nHost: example.com\r\n Content-Length: 45\r\n\r\n" .. SMUGGLED },
  { name = "obs-fold with HTAB after an empty value", status = 400,
    raw = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A:\r\n\tContent-Length: 4\r\n\r\n" },
  { name = "obs-fold of an ordinary header", status = 400,
    raw = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: one\r\n two\r\n\r\n" },
  -- 5. Transfer-Encoding
  { name = "an empty Transfer-Encoding with a Content-Length", status = 400,
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\nabc"
      .. SMUGGLED },
  { name = "a Transfer-Encoding whose last coding is not chunked", status = 400,
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\nabc" },
  { name = "gzip, chunked (a coding we do not implement)", status = 501,
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
      .. "3\r\nabc\r\n0\r\n\r\n" },
  -- 6. Host (RFC 9112 §3.2)
  { name = "HTTP/1.1 without Host", status = 400, raw = "GET / HTTP/1.1\r\n\r\n" },
  { name = "two Host lines", status = 400,
    raw = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n" },
  { name = "an empty Host with an absolute-form authority", status = 400,
    raw = "GET http://example.com/ HTTP/1.1\r\nHost:\r\n\r\n" },
  { name = "a comma-separated Host", status = 400, raw = "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n" },
  { name = "a Host with userinfo", status = 400, raw = "GET / HTTP/1.1\r\nHost: user@example.com\r\n\r\n" },
  { name = "a Host with a path", status = 400, raw = "GET / HTTP/1.1\r\nHost: example.com/admin\r\n\r\n" },
  -- low items of the parser
  { name = "an HTTP/0.9 request line", status = 505, raw = "GET / HTTP/0.9\r\n\r\n" },
  { name = "a request line without a version (HTTP/0.9)", status = 505, raw = "GET /\r\nHost: 127.0.0.1\r\n\r\n" },
  { name = "an HTTP/2.0 request line", status = 505, raw = "GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n" },
  { name = "the HTTP/2 preface", status = 505, raw = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" },
  { name = "an unknown method", status = 501, raw = "FROB / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" },
  { name = "GET *", status = 400, raw = "GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" },
  { name = "an empty header name", status = 400, raw = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n: v\r\n\r\n" },
  { name = "CONNECT", status = 405, raw = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" },
  { name = "chunk extensions over --max-body", status = 413,
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "3;x=" .. string.rep("e", 1200) .. "\r\nabc\r\n0\r\n\r\n" },
  { name = "one chunk's extensions over their limit (4 KiB)", status = 400,
    raw = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "3;x=" .. string.rep("e", 5000) .. "\r\nabc\r\n0\r\n\r\n", max_body = "1m" },
}

describe("hostile requests", function()
  local srv, big
  setup(function()
    srv = helpers.start("app", { "--workers", "1", "--max-body", "1000" })
    big = helpers.start("app", { "--workers", "1", "--max-body", "1m" })
  end)
  teardown(function()
    helpers.stop_all()
  end)

  for _, case in ipairs(REFUSED) do
    describe(case.name, function()
      it("answers " .. case.status .. ", closes, runs nothing more, and the worker keeps serving", function()
        local s = case.max_body and big or srv
        local c = s:connect()
        c:send(case.raw)
        local resp = assert(c:receive())
        assert.are.equal(case.status, resp.status)
        assert.are.equal("close", resp.headers.connection)
        assert.is_true(c:closed_by_peer())
        local again = assert(s:get("/"))
        assert.are.equal(200, again.status)
        assert.are.equal(0, s:count_log("respawning"))
      end)
    end)
  end

  describe("HTTP/1.0 with Transfer-Encoding: chunked", function()
    it("answers it, then closes without running what follows (RFC 9112 §6.1)", function()
      local c = srv:connect()
      c:send("POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "3\r\nabc\r\n0\r\n\r\n" .. SMUGGLED)
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      assert.are.equal("abc", helpers.json_decode(resp.body).body)
      assert.is_true(c:closed_by_peer())
    end)
  end)

  describe("req.headers.host", function()
    it("is one string", function()
      local resp = assert(srv:get("/headers", { Host = "example.com:8080" }))
      assert.are.equal(200, resp.status)
      assert.are.equal("example.com:8080", helpers.json_decode(resp.body).host)
    end)

    it("is not needed in HTTP/1.0", function()
      local c = srv:connect()
      c:send("GET / HTTP/1.0\r\n\r\n")
      assert.are.equal(200, assert(c:receive()).status)
    end)
  end)

  describe("header values", function()
    it("lose their trailing whitespace", function()
      local c = srv:connect()
      c:send("GET /headers HTTP/1.1\r\nHost: 127.0.0.1 \r\nX-Trail: v \t \r\nX-Inner:  a  b\t\r\n\r\n")
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      local h = helpers.json_decode(resp.body)
      assert.are.equal("127.0.0.1", h.host)
      assert.are.equal("v", h["x-trail"])
      assert.are.equal("a  b", h["x-inner"])
    end)
  end)

  describe("what is still accepted", function()
    it("OPTIONS * reaches the handler", function()
      local c = srv:connect()
      c:send("OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
      local resp = assert(c:receive())
      assert.is_true(resp.status ~= 400 and resp.status < 500)
    end)

    it("chunk extensions within the limits", function()
      local c = srv:connect()
      c:send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "3;name=value\r\nabc\r\n0\r\n\r\n")
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      assert.are.equal("abc", helpers.json_decode(resp.body).body)
    end)
  end)
end)
