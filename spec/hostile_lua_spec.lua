-- spec/hostile_lua_spec.lua: careless handlers and hostile bodies on the Lua side (issue 13): a head
-- that cannot be sent is a 500 at once, res.statusCode is checked, control characters never reach a
-- header, sleeps must be durations, and a trailer never becomes a header.
local helpers = require "spec.helpers"

local decode = helpers.json_decode

describe("hostile lua", function()
  local srv

  before_each(function()
    -- a long request timeout: a response that never comes would be a 503 only after it
    srv = helpers.start("hostile_lua_app", { "--workers", "1", "--request-timeout", "300" })
  end)

  after_each(function()
    helpers.stop_all()
  end)

  describe("an error inside res:finish()", function()
    for _, case in ipairs({ "crlf", "nul", "ctl", "del", "name", "clen" }) do
      it("answers 500 at once and logs the error (" .. case .. ")", function()
        local c = srv:connect()
        local r = assert(c:request("GET", "/bad-head?case=" .. case))
        assert.are.equal(500, r.status)
        assert.is_nil(r.headers["set-cookie"])
        assert.is_nil(r.body:find("should not be sent", 1, true))
        srv:wait_log("error in handler for GET /bad%-head%?case=" .. case .. ": .*hostile_lua_app%.lua:%d+: .*header")
        -- the worker goes on serving
        assert.are.equal(404, assert(srv:get("/nothing")).status)
      end)
    end

    it("answers 500 at once even when the handler catches the error", function()
      local r = assert(srv:get("/bad-head-caught?case=crlf"))
      assert.are.equal(500, r.status)
      srv:wait_log("caught: false .*control characters")
    end)
  end)

  describe("res:setHeader", function()
    for _, byte in ipairs({ 1, 8, 10, 13, 27, 31, 127 }) do
      it("refuses control character " .. byte, function()
        local r = decode(assert(srv:get("/set-ctl?byte=" .. byte)).body)
        assert.is_false(r.ok)
        assert.matches("control characters", r.err)
      end)
    end

    it("takes a horizontal tab", function()
      assert.is_true(decode(assert(srv:get("/set-ctl?byte=9")).body).ok)
    end)
  end)

  describe("res.statusCode set directly", function()
    for _, code in ipairs({ "100", "199", "600", "999", "0", "nan", "200.5" }) do
      it("is not sent when it is not a final status (" .. code .. "): 500, logged", function()
        local r = assert(srv:get("/status?code=" .. code))
        assert.are.equal(500, r.status)
        srv:wait_log("error in handler for GET /status%?code=" .. helpers.escape_pattern(code)
          .. ": .*not a final status")
      end)
    end

    it("is sent when it is one", function()
      local r = assert(srv:get("/status?code=418"))
      assert.are.equal(418, r.status)
      assert.are.equal("body", r.body)
    end)
  end)

  describe("moonfork.sleep and setTimeout", function()
    for _, v in ipairs({ "nan", "inf", "huge", "neg" }) do
      it("reject " .. v, function()
        local r = decode(assert(srv:get("/sleep?v=" .. v)).body)
        assert.is_false(r.sleep, r.err)
        assert.matches("ms must be", r.err)
        assert.is_false(r.timeout, r.err2)
        assert.matches("ms must be", r.err2)
      end)
    end
  end)

  describe("req.trailers", function()
    local function post(trailer)
      local body = "4\r\nwiki\r\n0\r\n" .. trailer .. "\r\n"
      local r = assert(srv:request("POST", "/trailers", {
        { "Transfer-Encoding", "chunked" }, { "X-Real", "head" },
      }, body))
      assert.are.equal(200, r.status, r.body)
      return decode(r.body)
    end

    it("keeps a trailer out of req.headers", function()
      local r = post("Authorization: Bearer forged\r\nX-Real: trailer\r\nHost: evil.example\r\n")
      assert.are.equal("wiki", r.body)
      assert.is_nil(r.headers.authorization)
      assert.are.equal("head", r.headers["x-real"])
      assert.are.equal("127.0.0.1", r.headers.host)
      assert.are.equal("Bearer forged", r.trailers.authorization)
      assert.are.equal("trailer", r.trailers["x-real"])
      assert.are.equal("evil.example", r.trailers.host)
    end)

    it("is an empty table without trailers", function()
      local r = post("")
      assert.are.same({}, r.trailers)
      assert.are.equal("head", r.headers["x-real"])
    end)
  end)
end)
