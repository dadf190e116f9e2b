-- spec/socket_spec.lua: moonfork.socket.tcp(), OpenResty's cosocket API, end to end: a worker talks
-- over loopback to spec/fixtures/tcp_upstream.lua (a luasocket server started here, stopped by pid),
-- through the routes of spec/fixtures/socket_app.lua.
local helpers = require "spec.helpers"
local socket = require "socket"

-- asks the upstream itself (a connection of its own, counted too)
local function upstream_says(up, cmd)
  local c = assert(socket.connect("127.0.0.1", up.port))
  c:settimeout(10)
  c:send(cmd .. "\n")
  local line = c:receive("*l")
  c:close()
  return tonumber(line)
end

local free_port, fd_count = helpers.free_port, helpers.fd_count

describe("moonfork.socket.tcp()", function()
  local up, srv

  before_each(function()
    up = helpers.start_upstream("tcp_upstream")
    srv = helpers.start("socket_app", { "--workers", "1" })
  end)

  after_each(function()
    helpers.stop_all()
    helpers.stop_upstream(up)
  end)

  local function call(path, query)
    local sep = path:find("?", 1, true) and "&" or "?"
    return helpers.get_json(srv, path .. sep .. (query or ("port=" .. up.port)))
  end

  describe("receive", function()
    it("reads lines, counts, receiveuntil (with and without size, inclusive), receiveany and *a from a peer writing byte by byte", function()
      local got = call("/patterns")
      local any = got.any
      got.any, got.all = nil, any .. got.all
      assert.is_true(got.sent > 90, tostring(got.sent))
      got.sent = nil
      assert.is_true(#any >= 1 and #any <= 4, any)
      assert.are.same({
        l1 = "first line", l2 = "second", n4 = "ABCD", zero = "", n6 = "EFGHIJ",
        chunks = { "hell", "o, w", "orld", "! -a", "gent", "zh" }, reader_end = "done",
        inclusive = "X--", plain = "Y", all = "rest of it", after = { false, "closed", "" },
      }, got)
    end)

    it("sends a nested table of strings and numbers without concatenating, and returns the bytes sent", function()
      assert.are.same({ n = 19, echo = "hello 12abc", closed = { false, "closed" } }, call("/send-table"))
    end)

    it("returns nil, 'timeout' on a read timeout and the socket stays usable", function()
      assert.are.same({ first = { false, "timeout", "" }, after = { "PONG" } }, call("/read-timeout"))
    end)

    it("returns nil, 'closed' and the partial data when the peer closes mid-body; the socket is closed", function()
      assert.are.same({ { false, "closed", "hello world" }, { false, "closed" } }, call("/half"))
    end)
  end)

  describe("connect", function()
    it("returns nil, 'connection refused' where nothing listens", function()
      assert.are.same({ false, "connection refused", { false, "closed" } },
        call("/refused", "port=" .. free_port()))
    end)

    it("returns nil, 'timeout' when the peer never completes the handshake", function()
      assert.are.same({ false, "timeout" }, call("/connect-timeout", "port=" .. up.full))
    end)

    it("resolves localhost through /etc/hosts, and names a host that does not resolve", function()
      local got = call("/names")
      assert.are.same({ 1 }, got.localhost)
      assert.are.equal("PONG", got.pong)
      assert.is_false(got.bad[1])
      assert.is_truthy(got.bad[2]:match("^no%-such%-host%.invalid could not be resolved"), got.bad[2])
    end)

    it("caches resolved names for --resolver-ttl", function()
      srv:stop()
      srv = helpers.start("socket_app", { "--workers", "1", "--resolver-ttl", "2.5" })
      local got = call("/resolver")
      assert.are.equal(2500, got.ttl)
      assert.is_true(got.cached)
      assert.is_true(got.left > 0 and got.left <= 2500, tostring(got.left))
    end)

    it("tries a name's next address when one refuses", function()
      assert.are.same({ { 1 }, "PONG", { false, "connection refused" } }, call("/next-address"))
    end)

    it("connects to a Unix-domain socket", function()
      assert.are.same({ { 1 }, "PONG", 1, { false, "closed" } }, call("/unix", "path=" .. up.path))
    end)
  end)

  describe("setkeepalive", function()
    it("reuses pooled connections: the upstream accepts one for many requests", function()
      assert.are.same({ reused = { 0, 1, 2, 3, 4 }, pooled = 1 }, call("/pool", "n=5&port=" .. up.port))
      assert.are.same({ reused = { 5, 6 }, pooled = 1 }, call("/pool", "n=2&port=" .. up.port))
      assert.are.equal(2, upstream_says(up, "ACCEPTS")) -- the worker's one, and this question
    end)

    it("closes a pooled connection the peer closes, and one idle past its timeout", function()
      assert.are.same({ reused = { 0 }, pooled = 1 }, call("/pool", "idle=50&port=" .. up.port))
      assert.are.same({ pooled = 0, reused = 0 }, call("/pool-empty"))
      assert.are.same({ reused = { 0 }, pooled = 1 }, call("/pool"))
      helpers.stop_upstream(up) -- the peer goes: the pooled connection sees it close
      up = helpers.start_upstream("tcp_upstream")
      assert.are.same({ pooled = 0, reused = 0 }, call("/pool-empty"))
    end)

    it("closes the pools when the worker drains, and a drain listener may use sockets", function()
      srv:stop()
      srv = helpers.start("socket_app", { "--workers", "1", "--grace", "30" })
      assert.are.same({ reused = { 0 }, pooled = 1 }, call("/pool"))
      call("/arm-drain") -- and the drain listener talks to the upstream
      assert.are.equal(2, upstream_says(up, "OPEN")) -- the pooled one, and this question
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/hold?port=" .. up.port)))
      srv:signal("TERM")
      local resp = assert(c:receive({ timeout = 30 }))
      assert.are.equal(200, resp.status)
      assert.are.same({ open = 1, pooled = 0 }, helpers.json_decode(resp.body))
      srv:wait_log("drain listener got PONG")
    end)

    it("refuses to pool a connection with unread data", function()
      assert.are.same({ { false, "connection in dubious state" }, { false, "closed" } }, call("/dubious"))
    end)

    it("sizes a pool at the first setkeepalive that gives a size, ignoring later sizes", function()
      assert.are.same({ pooled = 2 }, call("/pool_size", "key=1&port=" .. up.port))
    end)

    it("queues connects past pool_size up to the backlog, and refuses the next", function()
      local got = call("/backlog", "key=1&port=" .. up.port)
      assert.are.same({ false, "too many waiting connect operations" }, got.c)
      assert.are.same({ 1 }, got.b)
      assert.are.equal(1, got.b_reused)
      assert.are.equal("PONG", got.b_pong)
    end)
  end)

  describe("where it may be used", function()
    it("works from a timer callback", function()
      assert.are.same({ pong = "PONG" }, call("/timer"))
    end)

    it("works inside a coroutine.wrap iterator in a handler", function()
      assert.are.same({ "a", "b", "c" }, call("/wrap"))
    end)

    it("closes the sockets a handler leaves open: no fd growth after many requests", function()
      local worker = srv.workers[1]
      for _ = 1, 20 do call("/leave-open") end
      local before = fd_count(worker)
      for _ = 1, 300 do assert.are.same({ "PONG" }, call("/leave-open")) end
      assert.is_true(fd_count(worker) <= before + 2, "fds grew from " .. before .. " to " .. fd_count(worker))
      assert.is_true(helpers.wait_for(function() return upstream_says(up, "OPEN") <= 2 end, 10) ~= nil)
    end)
  end)
end)

describe("sock:sslhandshake()", function()
  local dir, ca, server

  -- a CA and a certificate for localhost made here, and openssl s_server -www presenting it
  before_each(function()
    dir = helpers.mktempdir()
    local q = function(name) return helpers.shell_quote(dir .. "/" .. name) end
    local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    assert(helpers.sh("openssl req -x509 " .. ec .. " -keyout " .. q("ca.key") .. " -out " .. q("ca.pem")
      .. " -days 2 -subj '/CN=moonfork spec CA' >/dev/null 2>&1"), "openssl: the CA")
    assert(helpers.sh("openssl req " .. ec .. " -keyout " .. q("srv.key") .. " -out " .. q("srv.csr")
      .. " -subj '/CN=localhost' >/dev/null 2>&1"), "openssl: the request")
    helpers.write_file(dir .. "/ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    assert(helpers.sh("openssl x509 -req -in " .. q("srv.csr") .. " -CA " .. q("ca.pem") .. " -CAkey "
      .. q("ca.key") .. " -CAcreateserial -out " .. q("srv.pem") .. " -days 2 -extfile " .. q("ext")
      .. " >/dev/null 2>&1"), "openssl: the certificate")
    ca = dir .. "/ca.pem"
    local port = free_port()
    server = helpers.bg_start({ "openssl", "s_server", "-accept", "127.0.0.1:" .. port, "-cert", dir .. "/srv.pem",
      "-key", dir .. "/srv.key", "-www", "-quiet" })
    server.port = port
    assert(helpers.wait_for(function()
      local c = socket.connect("127.0.0.1", port)
      if c then c:close() end
      return c ~= nil
    end, 10), "openssl s_server never listened")
  end)

  after_each(function()
    helpers.stop_all()
    helpers.bg_stop(server.proc or server, "KILL")
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)

  local function tls(srv, query)
    local resp = assert(srv:get("/tls?port=" .. server.port .. "&" .. query))
    assert.are.equal(200, resp.status, resp.body)
    return helpers.json_decode(resp.body)
  end

  it("verifies the peer against the CA store and its name, then carries data", function()
    local srv = helpers.start_env("socket_app", { "--workers", "1" }, { SSL_CERT_FILE = ca })
    local got = tls(srv, "name=localhost&verify=1")
    assert.are.same({ true }, got.hs)
    assert.are.equal("HTTP/1.0 200 ok", got.line)
  end)

  it("returns a session that a later handshake resumes", function()
    local srv = helpers.start_env("socket_app", { "--workers", "1" }, { SSL_CERT_FILE = ca })
    local resp = assert(srv:get("/tls_reuse?port=" .. server.port))
    assert.are.equal(200, resp.status, resp.body)
    local got = helpers.json_decode(resp.body)
    assert.are.equal("userdata", got.kind)
    assert.are.equal("New", got.first)
    assert.are.equal("Reused", got.second)
    assert.are.same({ false, true }, got.reused)
  end)

  it("fails with the reason for a wrong name or an unknown CA; without verify it connects", function()
    local srv = helpers.start_env("socket_app", { "--workers", "1" }, { SSL_CERT_FILE = ca })
    assert.are.same({ false, "certificate verify failed: hostname mismatch" },
      tls(srv, "name=wrong.example&verify=1").hs)
    srv:stop()
    srv = helpers.start("socket_app", { "--workers", "1" }) -- the system's store: our CA is unknown
    assert.are.same({ false, "certificate verify failed: unable to get local issuer certificate" },
      tls(srv, "name=localhost&verify=1").hs)
    local got = tls(srv, "name=localhost")
    assert.are.same({ true }, got.hs)
    assert.are.equal("HTTP/1.0 200 ok", got.line)
  end)
end)
