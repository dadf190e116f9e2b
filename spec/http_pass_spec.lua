-- spec/http_pass_spec.lua: moonfork.http.pass end to end: the real binary runs spec/fixtures/pass_app.lua
-- (one worker) in front of a raw upstream that counts its connections (spec/fixtures/pass_raw_upstream.lua);
-- the spec talks HTTP/1.1 to both. (examples/proxy.lua, built on it, is spec/proxy_spec.lua's.)
local helpers = require "spec.helpers"

local function start_raw_upstream(unix_path)
  local dir = helpers.mktempdir()
  local raw = helpers.bg_start({ "lua", helpers.FIXTURES .. "/pass_raw_upstream.lua", dir .. "/info", unix_path })
  finally(function()
    helpers.bg_stop(raw, "KILL")
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)
  return tonumber(helpers.wait_for(function() return helpers.read_file(dir .. "/info") end))
end

local function stats(port)
  local c = assert(helpers.connect(port))
  local resp = assert(c:request("GET", "/stats"))
  c:close()
  return helpers.json_decode(resp.body)
end

local function start_pass(port, env)
  env = env or {}
  env.PASS_UPSTREAM = env.PASS_UPSTREAM or ("127.0.0.1:" .. port)
  return helpers.start_env("pass_app", { "--workers", "1" }, env)
end

describe("moonfork.http.pass", function()
  after_each(function() helpers.stop_all() end)

  it("reuses a pooled connection: twenty requests, one accept", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port)
    for i = 1, 20 do
      local c = proxy:connect() -- a new client connection each time: the pool is the proxy's, per upstream
      local resp = assert(c:request("GET", "/n" .. i))
      assert.are.equal(200, resp.status)
      assert.are.equal("ok", resp.body)
      c:close()
    end
    proxy:wait_log("pass: 200 nil true", 20)
    assert.are.equal(1, stats(port).accepts)
  end)

  it("passes to a Unix-domain socket upstream (\"unix:/path\")", function()
    local dir = helpers.mktempdir()
    finally(function() helpers.sh("rm -rf " .. helpers.shell_quote(dir)) end)
    start_raw_upstream(dir .. "/up.sock")
    local proxy = start_pass(nil, { PASS_UPSTREAM = "unix:" .. dir .. "/up.sock" })
    for _ = 1, 3 do
      local resp = assert(proxy:get("/"))
      assert.are.equal(200, resp.status)
      assert.are.equal("ok", resp.body)
    end
    proxy:wait_log("pass: 200 nil true", 3)
  end)

  it("closes a pooled connection left idle longer than opts.idle", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port, { PASS_IDLE_MS = 100 })
    assert.are.equal(200, assert(proxy:get("/")).status)
    helpers.wait_for(function() return stats(port).peer_closed == 1 end)
    assert.are.equal(200, assert(proxy:get("/")).status)
    assert.are.equal(2, stats(port).accepts)
  end)

  it("drops a pooled connection the upstream closed, and answers from a fresh one", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port)
    local c = proxy:connect()
    assert.are.equal(200, assert(c:request("GET", "/then-close")).status)
    for _ = 1, 3 do assert.are.equal("ok", assert(c:request("GET", "/")).body) end
    assert.are.equal(2, stats(port).accepts)
    assert.are.equal(0, proxy:count_log("pass: nil"))
  end)

  it("answers 502 to a malformed response and does not reuse its connection", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port)
    local c = proxy:connect()
    local resp = assert(c:request("GET", "/malformed"))
    assert.are.equal(502, resp.status)
    assert.are.equal("502 Bad Gateway\n", resp.body)
    proxy:wait_log("pass: nil malformed response[^\n]* false")
    assert.are.equal("ok", assert(c:request("GET", "/")).body) -- the client's connection goes on
    local st = stats(port)
    assert.are.equal(2, st.accepts)
    helpers.wait_for(function() return stats(port).peer_closed >= 1 end) -- the broken one was closed
  end)

  it("rebuilds the request head: hop-by-hop and removed headers gone, X-Forwarded-For appended, extra added", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port)
    local c = proxy:connect()
    local resp = assert(c:request("GET", "/head", {
      { "Connection", "keep-alive, X-Hop" }, { "X-Hop", "1" }, { "Keep-Alive", "timeout=9" }, { "Cookie", "c=1" },
      { "X-Forwarded-For", "10.1.1.1" }, { "X-Kept", "k" },
    }))
    assert.are.equal(200, resp.status)
    local head = resp.body:lower()
    assert.is_truthy(head:find("^get /head http/1%.1\r\n"), head)
    assert.is_truthy(head:find("\r\nx%-kept: k\r\n"), head)
    assert.is_truthy(head:find("\r\nx%-forwarded%-for: 10%.1%.1%.1, 127%.0%.0%.1\r\n"), head)
    assert.is_truthy(head:find("\r\nx%-added: yes\r\n"), head)
    for _, gone in ipairs({ "connection", "x-hop", "keep-alive", "cookie" }) do
      assert.is_falsy(head:find("\r\n" .. gone:gsub("%-", "%%-") .. ":"), gone .. " was passed on: " .. head)
    end
  end)

  it("relays chunked, close-delimited, interim-then-final and bodiless upstream responses", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port)
    local c = proxy:connect()
    local resp = assert(c:request("GET", "/chunked"))
    assert.are.equal(200, resp.status)
    assert.are.equal("hello, world", resp.body)
    resp = assert(c:request("GET", "/interim"))
    assert.are.equal(200, resp.status)
    assert.are.equal("after 100", resp.body)
    resp = assert(c:request("GET", "/no-content"))
    assert.are.equal(204, resp.status)
    assert.are.equal("", resp.body)
    resp = assert(c:request("GET", "/until-close"))
    assert.are.equal(200, resp.status)
    assert.are.equal("to the end", resp.body)
    assert.are.equal("ok", assert(c:request("GET", "/")).body) -- the client's connection goes on
    assert.are.equal(0, proxy:count_log("pass: nil"))
  end)

  it("refuses a response body over opts.maxBody: 502 before anything was sent", function()
    local port = start_raw_upstream()
    local proxy = start_pass(port, { PASS_MAX_BODY = 5 })
    local c = proxy:connect()
    assert.are.equal("ok", assert(c:request("GET", "/")).body)
    local resp = assert(c:request("GET", "/interim")) -- "after 100": 9 bytes
    assert.are.equal(502, resp.status)
    proxy:wait_log("pass: nil response body larger than maxBody[^\n]* false")
  end)

  it("answers 502 and says why when the upstream refuses, and raises on a bad upstream", function()
    local proxy = start_pass(helpers.free_port())
    local resp = assert(proxy:get("/"))
    assert.are.equal(502, resp.status)
    proxy:wait_log("pass: nil connection refused false")
  end)

  it("times out an upstream that accepts and never answers: 502, connection not reused", function()
    local server = require("socket").bind("127.0.0.1", 0)
    local _, port = server:getsockname()
    finally(function() server:close() end)
    local proxy = start_pass(port, { PASS_TIMEOUT_MS = 200 })
    local resp = assert(proxy:get("/"))
    assert.are.equal(502, resp.status)
    proxy:wait_log("pass: nil timeout false")
  end)
end)
