-- spec/proxy_spec.lua: examples/proxy.lua end to end: the real binary runs the proxy (one worker, so
-- that its round robin and its health state are one), in front of upstreams that are moonfork too
-- (spec/fixtures/proxy_upstream.lua, one worker each, told apart by their worker pid); the spec talks
-- raw HTTP/1.1 to the proxy, and to the upstreams directly to ask how a response went.
local helpers = require "spec.helpers"

local PROXY = helpers.ROOT .. "/examples/proxy.lua"
local MB = 1024 * 1024

local function start_upstream(port)
  local args = { "--workers", "1", "--max-body", "16m", "--keepalive-timeout", "600" }
  if port then args[#args + 1] = "--port=" .. port end
  local up = helpers.start("proxy_upstream", args)
  up.pid_text = tostring(up.workers[1])
  return up
end

local function addr(port) return "127.0.0.1:" .. port end

-- The proxy in front of `list` (servers or ports); env: more PROXY_* variables.
local function start_proxy(list, env)
  local names = {}
  for i, u in ipairs(list) do names[i] = addr(type(u) == "table" and u.port or u) end
  env = env or {}
  env.PROXY_UPSTREAMS = table.concat(names, ",")
  return helpers.start_env(PROXY, { "--workers", "1" }, env)
end

local function whoami(conn)
  local resp = assert(conn:request("GET", "/whoami"))
  return resp.status == 200 and resp.body or resp.status
end

local function random_bytes(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local s = f:read(n)
  f:close()
  return s
end

describe("examples/proxy.lua", function()
  after_each(function() helpers.stop_all() end)

  it("refuses to start with a bad upstream or setting, saying which", function()
    for _, case in ipairs({
      { { PROXY_UPSTREAMS = "127.0.0.1" }, "bad upstream 127%.0%.0%.1 %(expected host:port%)" },
      { { PROXY_UPSTREAMS = "127.0.0.1:70000" }, "bad upstream 127%.0%.0%.1:70000" },
      { { PROXY_UPSTREAMS = " , " }, "no upstreams" },
      { { PROXY_UPSTREAMS = "127.0.0.1:1", PROXY_SKIP_MS = "soon" }, "PROXY_SKIP_MS%) must be a number from 0 up, not soon" },
      { { PROXY_UPSTREAMS = "127.0.0.1:1", PROXY_POOL_SIZE = "0" }, "PROXY_POOL_SIZE%) must be a number from 1 up, not 0" },
      { { PROXY_UPSTREAMS = "127.0.0.1:1", PROXY_MODE = "fast" }, 'mode must be "c" or "lua", not fast' },
    }) do
      local srv = helpers.start_env(PROXY, { "--workers", "1" }, case[1], { wait = false })
      local status = srv:exit_status()
      assert.is_truthy(status and status ~= 0, "it started with " .. next(case[1]))
      assert.is_truthy(srv:log_text():find(case[2]), srv:log_text())
    end
  end)

  it("keeps the Lua byte path with PROXY_MODE=lua (moonfork.http.request instead of moonfork.http.pass)", function()
    local a = start_upstream()
    local proxy = start_proxy({ a }, { PROXY_MODE = "lua" })
    local c = proxy:connect()
    assert.are.equal(a.pid_text, whoami(c))
    local got = helpers.json_decode(assert(c:request("GET", "/headers", { { "X-Forwarded-For", "10.9.9.9" } })).body)
    assert.are.equal("/headers", got.url)
  end)

  it("sends each request to the next upstream in turn", function()
    local a, b = start_upstream(), start_upstream()
    local proxy = start_proxy({ a, b })
    local c = proxy:connect()
    local seen = {}
    for i = 1, 6 do seen[i] = whoami(c) end
    assert.are.same({ a.pid_text, b.pid_text, a.pid_text, b.pid_text, a.pid_text, b.pid_text }, seen)
  end)

  it("passes the method, URL and end-to-end headers on, drops hop-by-hop ones and appends X-Forwarded-For", function()
    local a = start_upstream()
    local proxy = start_proxy({ a })
    local c = proxy:connect()
    local resp = assert(c:request("PATCH", "/headers?x=1", {
      { "Connection", "keep-alive, X-Private" }, { "X-Private", "secret" }, { "Keep-Alive", "timeout=5" },
      { "TE", "trailers" }, { "Proxy-Authorization", "Basic eA==" }, { "X-End-To-End", "kept" },
      { "X-Forwarded-For", "10.0.0.1" },
    }))
    assert.are.equal(200, resp.status, resp.body)
    local got = helpers.json_decode(resp.body)
    assert.are.equal("PATCH", got.method)
    assert.are.equal("/headers?x=1", got.url)
    local h = got.headers
    assert.are.equal("kept", h["x-end-to-end"])
    assert.are.equal("10.0.0.1, 127.0.0.1", h["x-forwarded-for"])
    for _, name in ipairs({ "x-private", "keep-alive", "te", "proxy-authorization" }) do
      assert.is_nil(h[name], name .. " was passed on")
    end
    -- without one from the client, X-Forwarded-For is the client's address alone
    got = helpers.json_decode(assert(c:request("GET", "/headers")).body)
    assert.are.equal("127.0.0.1", got.headers["x-forwarded-for"])
  end)

  -- spec/fixtures/proxy_raw_upstream.lua, stopped when the test ends: its port
  local function start_raw_upstream()
    local dir = helpers.mktempdir()
    local raw = helpers.bg_start({ "lua", helpers.FIXTURES .. "/proxy_raw_upstream.lua", dir .. "/info" })
    finally(function()
      helpers.bg_stop(raw, "KILL")
      helpers.sh("rm -rf " .. helpers.shell_quote(dir))
    end)
    return tonumber(helpers.wait_for(function() return helpers.read_file(dir .. "/info") end))
  end

  it("sends the path of an absolute-form target, and answers 400 to a target it cannot pass on", function()
    local a = start_upstream()
    local proxy = start_proxy({ a }, { PROXY_SKIP_MS = 600000 })
    local c = proxy:connect()
    local got = helpers.json_decode(assert(c:request("GET", "http://example.com/headers?y=2")).body)
    assert.are.equal("/headers?y=2", got.url)
    local resp = assert(c:request("OPTIONS", "*"))
    assert.are.equal(400, resp.status)
    c = proxy:connect()
    assert.are.equal(a.pid_text, whoami(c)) -- the upstream was not blamed for it
  end)

  it("drops the upstream's hop-by-hop response headers and keeps the rest", function()
    local proxy = start_proxy({ start_raw_upstream() })
    local resp = assert(proxy:get("/"))
    assert.are.equal(200, resp.status)
    assert.are.equal("ok", resp.body)
    assert.are.equal("kept", resp.headers["x-end-to-end"])
    for _, name in ipairs({ "x-private", "keep-alive", "upgrade", "proxy-authenticate" }) do
      assert.is_nil(resp.headers[name], name .. " was passed on")
    end
  end)

  it("answers HEAD with the upstream's length and no body, and passes a 404 on as it is", function()
    local a = start_upstream()
    local proxy = start_proxy({ a })
    local c = proxy:connect()
    local resp = assert(c:request("HEAD", "/whoami"))
    assert.are.equal(200, resp.status)
    assert.are.equal(tostring(#a.pid_text), resp.headers["content-length"])
    assert.are.equal("", resp.body)
    resp = assert(c:request("GET", "/nowhere"))
    assert.are.equal(404, resp.status)
    assert.are.equal("no such route\n", resp.body)
    assert.are.equal(a.pid_text, whoami(c)) -- the same connection still works: nothing was left over
  end)

  it("streams a large request body to the upstream and its response back, with a length or chunked", function()
    local a = start_upstream()
    local proxy = start_proxy({ a })
    local body = random_bytes(8 * MB)
    local c = proxy:connect()
    local resp = assert(c:request("POST", "/echo", nil, body, { timeout = 60 }))
    assert.are.equal(200, resp.status)
    assert.is_true(resp.body == body, "the echoed body differs (" .. #resp.body .. " bytes)")
    local parts = {}
    for i = 1, 8 do parts[i] = body:sub((i - 1) * MB + 1, i * MB) end
    resp = assert(c:request("PUT", "/echo", { { "Transfer-Encoding", "chunked" } }, helpers.chunked(parts),
      { timeout = 60 }))
    assert.are.equal(200, resp.status)
    assert.is_true(resp.body == body, "the echoed chunked body differs (" .. #resp.body .. " bytes)")
  end)

  it("relays an upstream's answer while the client's request body is still coming in (full duplex)", function()
    local a = start_upstream()
    local proxy = start_proxy({ a })
    local c = proxy:connect()
    assert(c:send("POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"))
    local resp = assert(c:receive({ timeout = 10 })) -- (sent whole first, the body would never end)
    assert.are.equal(200, resp.status)
    assert.are.equal("early", resp.body)
    assert(c:send("0\r\n\r\n"))
  end)

  describe("a failing upstream", function()
    it("answers 502 with a short body when the upstream refuses the connection", function()
      local proxy = start_proxy({ helpers.free_port() })
      local resp = assert(proxy:get("/whoami"))
      assert.are.equal(502, resp.status)
      assert.are.equal("502 Bad Gateway\n", resp.body)
    end)

    it("answers 502 when the upstream dies after sending its head", function()
      local a = start_upstream()
      local proxy = start_proxy({ a })
      local c = proxy:connect()
      local resp = assert(c:request("GET", "/die-after-head"))
      assert.are.equal(502, resp.status)
      assert.are.equal("502 Bad Gateway\n", resp.body)
    end)

    it("answers 502 to a response that is not HTTP or has no final status, and goes on serving", function()
      local proxy = start_proxy({ start_raw_upstream() })
      local c = proxy:connect()
      local resp = assert(c:request("GET", "/malformed"))
      assert.are.equal(502, resp.status)
      resp = assert(c:request("GET", "/status999"))
      assert.are.equal(502, resp.status)
      resp = assert(c:request("GET", "/"))
      assert.are.equal(200, resp.status)
      assert.are.equal("ok", resp.body)
    end)

    it("abandons the upstream exchange when the client's streamed body fails, so no short body passes for whole", function()
      local a = start_upstream()
      local proxy = start_proxy({ a }, { PROXY_MAX_BODY = "64k", PROXY_SKIP_MS = 600000 })
      local c = proxy:connect()
      local parts = {}
      for i = 1, 4 do parts[i] = string.rep("z", 32 * 1024) end
      -- (/sink answers only after the whole body: the 413 goes out before any response has begun)
      local resp = assert(c:request("POST", "/sink", { { "Transfer-Encoding", "chunked" } }, helpers.chunked(parts)))
      assert.are.equal(413, resp.status)
      local stats = helpers.wait_for(function()
        local st = helpers.json_decode(assert(a:get("/stats")).body)
        return (st.echo_failed > 0 or st.echoed > 0) and st
      end)
      assert.are.same({ 1, 0 }, { stats.echo_failed, stats.echoed }) -- cut off, not taken as whole
      c = proxy:connect()
      assert.are.equal(a.pid_text, whoami(c)) -- not the upstream's fault
    end)

    it("cuts the client's connection when the upstream dies mid-body, so the body cannot look complete", function()
      local a = start_upstream()
      local proxy = start_proxy({ a })
      local c = proxy:connect()
      local resp, err, partial = c:request("GET", "/die-mid-body")
      assert.is_nil(resp)
      assert.are.equal("closed", err)
      assert.are.equal(200, partial.status)
      assert.are.equal("1000000", partial.headers["content-length"])
      assert.is_true(#c.buf < 1000000)
    end)

    it("skips an upstream that failed, for PROXY_SKIP_MS", function()
      local a = start_upstream()
      local proxy = start_proxy({ a, helpers.free_port() }, { PROXY_SKIP_MS = 600000 })
      local c = proxy:connect()
      assert.are.equal(a.pid_text, whoami(c))
      assert.are.equal(502, whoami(c)) -- its turn: refused
      for _ = 1, 6 do assert.are.equal(a.pid_text, whoami(c)) end
      proxy:wait_log("upstream 127%.0%.0%.1:%d+ failed %(connection refused%): skipped for 600000 ms")
    end)

    it("does not skip an upstream that closed under a request it could not be sent again (a POST)", function()
      local a, b = start_upstream(), start_upstream()
      local proxy = start_proxy({ a, b }, { PROXY_SKIP_MS = 600000 })
      local c = proxy:connect()
      -- a POST: a connection closed under it may have been a stale pooled one, so a has its turn again
      assert.are.equal(502, assert(c:request("POST", "/die-after-head", nil, "x")).status)
      assert.are.same({ b.pid_text, a.pid_text }, { whoami(c), whoami(c) })
      -- a GET (b's turn) was sent again on a fresh connection already (by moonfork.http.request):
      -- b is skipped
      assert.are.equal(502, assert(c:request("GET", "/die-after-head")).status)
      assert.are.same({ a.pid_text, a.pid_text }, { whoami(c), whoami(c) })
    end)

    it("goes back to a skipped upstream once its skip time is over", function()
      local a = start_upstream()
      local port = helpers.free_port()
      local proxy = start_proxy({ a, port }, { PROXY_SKIP_MS = 200 })
      local c = proxy:connect()
      assert.is_truthy(helpers.wait_for(function() return whoami(c) == 502 end))
      local b = start_upstream(port)
      assert.are.equal(port, b.port)
      assert.is_truthy(helpers.wait_for(function() return whoami(c) == b.pid_text end))
    end)
  end)

  -- Reads a response of `size` bytes of body off c without keeping it; returns the byte count.
  local function count_body(c, size)
    local head = assert(c:read_line(helpers.now() + helpers.DEADLINE))
    assert.are.equal("HTTP/1.1 200 OK", head)
    repeat local line = assert(c:read_line(helpers.now() + helpers.DEADLINE)) until line == ""
    local got = #c.buf
    c.buf = ""
    c.sock:settimeout(helpers.DEADLINE)
    while got < size do
      local data, err, partial = c.sock:receive(math.min(size - got, 1024 * 1024))
      data = data or partial
      got = got + #data
      if err then break end
    end
    return got
  end

  it("reads no faster from the upstream than a slow client takes the response (backpressure)", function()
    local a = start_upstream()
    local proxy = start_proxy({ a })
    local size = 48 * MB
    local c = proxy:connect()
    assert.are.equal(a.pid_text, whoami(c)) -- (the worker's pool, buffers and code warmed up)
    local rss0 = helpers.rss_kib(proxy.workers[1])
    assert(c:send(helpers.build_request("GET", "/big?bytes=" .. size)))
    -- The client reads nothing: the upstream must come to a stop, waiting for "drain" with most of its
    -- body unsent (seen the same in 10 polls in a row), while the proxy's worker holds only a few
    -- buffers of it. A proxy that read on regardless would take the whole body in and grow.
    local last, same = nil, 0
    local stats = helpers.wait_for(function()
      local s = helpers.json_decode(assert(a:get("/stats")).body)
      if s.done then return s end
      same = (s.blocked and s.written == last) and same + 1 or 0
      last = s.written
      return same >= 10 and s
    end)
    assert.is_truthy(stats, "the upstream never stopped")
    assert.is_false(stats.done, "the upstream could write its whole body to a client reading nothing")
    assert.is_true(stats.written < size / 2, "the upstream wrote " .. stats.written .. " bytes")
    local grown = helpers.rss_kib(proxy.workers[1]) - rss0
    assert.is_true(grown < 16 * 1024, "the proxy's worker grew by " .. grown .. " KiB")
    -- and once the client reads, the whole body comes through
    assert.are.equal(size, count_body(c, size))
    assert.is_true(helpers.json_decode(assert(a:get("/stats")).body).done)
  end)

  it("drops the upstream's connection when the client leaves mid-download", function()
    local a = start_upstream()
    local proxy = start_proxy({ a })
    local worker = proxy.workers[1]
    local before = helpers.fd_count(worker)
    local c = proxy:connect()
    assert(c:send(helpers.build_request("GET", "/big?bytes=" .. 48 * MB)))
    assert.is_truthy(helpers.wait_for(function()
      return helpers.json_decode(assert(a:get("/stats")).body).blocked
    end), "the upstream never had to wait")
    c:close()
    assert.is_truthy(helpers.wait_for(function()
      return helpers.json_decode(assert(a:get("/stats")).body).aborted
    end), "the upstream's response was never cut")
    assert.is_truthy(helpers.wait_for(function() return helpers.fd_count(worker) <= before end),
      "the proxy's worker kept descriptors: " .. tostring(helpers.fd_count(worker)) .. " (" .. before .. " before)")
  end)

  it("keeps an upstream connection for the next request, and closes it once idle past PROXY_IDLE_MS", function()
    local a = start_upstream()
    local proxy = start_proxy({ a }, { PROXY_IDLE_MS = 300 })
    local worker = proxy.workers[1]
    local before = helpers.fd_count(worker)
    local c = proxy:connect()
    assert.are.equal(a.pid_text, whoami(c))
    assert.are.equal(before + 2, helpers.fd_count(worker)) -- the client's connection, the upstream's
    for _ = 1, 5 do assert.are.equal(a.pid_text, whoami(c)) end
    assert.are.equal(before + 2, helpers.fd_count(worker)) -- the same upstream connection again
    c:close()
    -- the client's connection goes at once; the pooled one to the upstream after 300 ms idle
    assert.is_truthy(helpers.wait_for(function() return helpers.fd_count(worker) == before end),
      "descriptors: " .. tostring(helpers.fd_count(worker)) .. ", " .. before .. " before")
  end)

  it("holds no more descriptors after 10,000 proxied requests than before them", function()
    local a, b = start_upstream(), start_upstream()
    local proxy = start_proxy({ a, b })
    local worker = proxy.workers[1]
    local c = proxy:connect()
    for _ = 1, 100 do assert.are.equal(200, assert(c:request("GET", "/whoami")).status) end
    local before = helpers.fd_count(worker)
    for i = 1, 10000 do
      if i % 1000 == 0 then -- a new client connection now and then
        c:close()
        c = proxy:connect()
      end
      local resp
      if i % 2 == 0 then
        resp = assert(c:request("POST", "/echo", nil, "body " .. i))
        assert.are.equal("body " .. i, resp.body)
      else
        resp = assert(c:request("GET", "/whoami"))
      end
      assert.are.equal(200, resp.status)
    end
    local after = helpers.fd_count(worker)
    assert.is_true(after <= before, "descriptors: " .. before .. " before, " .. after .. " after")
  end)
end)
