-- spec/http_pass_upgrade_spec.lua: Upgrade (WebSocket) tunnels through moonfork.http.pass, end to end.
-- The proxy is the real binary running spec/fixtures/pass_upgrade_app.lua (one worker). Its upstream
-- is either moonfork's own WebSocket echo (spec/fixtures/ws_app.lua, a second server), spoken to in
-- raw frames (spec/ws_client.lua), or a raw upstream (spec/fixtures/pass_upgrade_upstream.lua) whose
-- 101s, floods and FINs the spec controls and which reports what it saw in an events file.
local helpers = require "spec.helpers"
local wsc = require "spec.ws_client"
local cjson = require "cjson"

local frame, read_frame, read_close = wsc.frame, wsc.read_frame, wsc.read_close
local TEXT, BINARY, CLOSE = wsc.TEXT, wsc.BINARY, wsc.CLOSE

local function deadline() return helpers.now() + helpers.DEADLINE end

-- The raw upstream: { port, events() -> the text so far, wait_event(pattern) -> its first capture }.
local function start_raw_upstream()
  local dir = helpers.mktempdir()
  local raw = helpers.bg_start({ "lua", helpers.FIXTURES .. "/pass_upgrade_upstream.lua", dir .. "/info", dir .. "/events" })
  finally(function()
    helpers.bg_stop(raw, "KILL")
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)
  local up = { port = tonumber(helpers.wait_for(function() return helpers.read_file(dir .. "/info") end)) }
  function up.events() return helpers.read_file(dir .. "/events") or "" end
  function up.wait_event(pattern) return helpers.wait_for(function() return up.events():match(pattern) end) end
  return up
end

local function start_proxy(port, env, args)
  env = env or {}
  env.PASS_UPSTREAM = "127.0.0.1:" .. port
  local argv = { "--workers", "1" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return helpers.start_env("pass_upgrade_app", argv, env)
end

-- An upgrade request for `path` (extra header pairs after the Upgrade and Connection ones).
local function upgrade_request(path, extra)
  local h = { { "Upgrade", "x-test/1" }, { "Connection", "Upgrade" } }
  for _, p in ipairs(extra or {}) do h[#h + 1] = p end
  return helpers.build_request("GET", path, h)
end

-- A tunnel to the raw upstream's /tunnel: the connection, the 101, and the head the upstream received.
local function open_tunnel(proxy)
  local c = proxy:connect()
  assert(c:send(upgrade_request("/tunnel")))
  local resp = assert(c:receive())
  assert.are.equal(101, resp.status)
  local n = tonumber(assert(c:read_line(deadline())):match("^HEAD (%d+)$"))
  return c, resp, assert(c:read_n(n, deadline()))
end

describe("moonfork.http.pass upgrades", function()
  after_each(function() helpers.stop_all() end)

  describe("to moonfork's WebSocket echo", function()
    local up, proxy

    before_each(function()
      up = helpers.start("ws_app", { "--workers", "1" })
      proxy = start_proxy(up.port)
    end)

    local function open(path, opts)
      local c, resp = wsc.open(proxy.port, path or "/plain", nil, opts)
      assert.are.equal(101, resp.status)
      return c, resp
    end

    -- The upstream's script heard a close with this "code reason" line.
    local function upstream_heard(line)
      return helpers.wait_for(function()
        for _, l in ipairs(cjson.decode(assert(up:get("/events")).body).closes) do
          if l == line then return true end
        end
      end)
    end

    it("passes the handshake through and relays text and binary frames both ways", function()
      local c, resp = open("/plain", { early = frame(TEXT, "sent with the request") })
      assert.are.equal(wsc.ACCEPT, resp.headers["sec-websocket-accept"]) -- the upstream's
      assert.are.equal("websocket", resp.headers.upgrade:lower())
      assert.are.equal("upgrade", resp.headers.connection:lower())
      local f = assert(read_frame(c)) -- a frame that came behind the request went on too
      assert.are.same({ TEXT, "sent with the request" }, { f.opcode, f.payload })
      assert(c:send(frame(TEXT, "hello")))
      f = assert(read_frame(c))
      assert.are.same({ TEXT, "hello" }, { f.opcode, f.payload })
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local bin = table.concat(bytes)
      assert(c:send(frame(BINARY, bin)))
      f = assert(read_frame(c))
      assert.are.same({ BINARY, bin }, { f.opcode, f.payload })
      proxy:wait_log("pass: 101 nil true")
    end)

    it("relays a message of a megabyte both ways, intact", function()
      local c = open("/big")
      local big = ("0123456789abcdef"):rep(62500) -- 1,000,000 bytes
      assert(c:send(frame(BINARY, big)))
      local f = assert(read_frame(c))
      assert.are.equal(BINARY, f.opcode)
      assert.are.equal(#big, #f.payload)
      assert.is_true(f.payload == big)
    end)

    it("passes the upstream's close on to the client, and the client's on to the upstream", function()
      local c = open() -- the upstream closes: its close frame, then its FIN, reach the client
      assert(c:send(frame(TEXT, "close:4001:bye")))
      local f = assert(read_close(c))
      assert.are.same({ 4001, "bye" }, { f.code, f.reason })
      assert(c:send(frame(CLOSE, wsc.close_payload(4001))))
      assert.is_true(c:closed_by_peer())
      assert.is_true(upstream_heard("4001 bye"))

      c = open() -- the client closes with a close frame: the upstream answers it and ends
      assert(c:send(frame(CLOSE, wsc.close_payload(1000, "done"))))
      assert.are.equal(1000, assert(read_close(c)).code)
      assert.is_true(c:closed_by_peer())
      assert.is_true(upstream_heard("1000 done"))

      c = open() -- the client just goes: the upstream sees its connection end
      c:close()
      assert.is_true(upstream_heard("1006 "))
    end)
  end)

  describe("to a raw upstream", function()
    it("asks for the upgrade as nginx does and passes the 101 on with Upgrade and Connection: upgrade", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port)
      local c = proxy:connect()
      assert(c:send(upgrade_request("/tunnel", { { "Connection", "keep-alive, X-Hop" }, { "X-Hop", "1" },
        { "Keep-Alive", "timeout=9" }, { "X-Kept", "k" } })))
      local resp = assert(c:receive())
      assert.are.equal(101, resp.status)
      assert.are.equal("x-test/1", resp.headers.upgrade)
      assert.are.equal("upgrade", resp.headers.connection) -- one Connection header, moonfork's
      assert.are.equal("1", resp.headers["x-up"])
      assert.is_nil(resp.headers["x-hop"])
      assert.is_nil(resp.headers["keep-alive"])
      assert.are_not.equal("Thu, 01 Jan 1970 00:00:00 GMT", resp.headers.date) -- moonfork's own Date
      local n = tonumber(assert(c:read_line(deadline())):match("^HEAD (%d+)$"))
      local head = assert(c:read_n(n, deadline())):lower()
      assert.is_truthy(head:find("^get /tunnel http/1%.1\r\n"), head)
      assert.is_truthy(head:find("\r\nupgrade: x%-test/1\r\n"), head)
      assert.is_truthy(head:find("\r\nconnection: upgrade\r\n"), head)
      assert.is_truthy(head:find("\r\nx%-kept: k\r\n"), head)
      assert.is_falsy(head:find("x%-hop"), head)
      assert.is_falsy(head:find("keep%-alive"), head)
      -- From now on the connection is the upstream's: even a request is bytes for it (it echoes them).
      local request = helpers.build_request("GET", "/", {})
      assert(c:send(request))
      assert.are.equal(request, c:read_n(#request, deadline()))
      proxy:wait_log("pass: 101 nil true")
    end)

    it("passes a FIN on as a FIN while the other direction goes on (half-close)", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port)
      local c = open_tunnel(proxy)
      assert(c.sock:shutdown("send"))
      up.wait_event("eof /tunnel")
      assert.are.equal("bye", c:read_until_close()) -- sent after the client's FIN, then the upstream's
    end)

    it("counts a tunnel as a connection until it closes (--max-connections, status)", function()
      local up = start_raw_upstream()
      local path = helpers.mktempdir() .. "/control.sock"
      local proxy = start_proxy(up.port, nil, { "--max-connections", "1", "--control", path })
      proxy:wait_log("control socket: " .. helpers.escape_pattern(path))
      local function connections()
        local st, out, err = helpers.ctl(path, nil, "status", "--json")
        assert.are.equal(0, st, err)
        return helpers.json_decode(out).workers[1].connections
      end
      local c = open_tunnel(proxy)
      -- the client's HTTP side is gone once the tunnel has it; the tunnel still counts
      assert.is_truthy(helpers.wait_for(function() return connections() == 1 end))
      local waiting = proxy:connect() -- at the limit: not taken while the tunnel is open
      assert(waiting:send(helpers.build_request("GET", "/plain", {})))
      assert(c:send("ping"))
      assert.are.equal("ping", c:read_n(4, deadline())) -- the worker went round its loop meanwhile
      assert.are.equal(1, connections())
      c:close()
      up.wait_event("eof /tunnel")
      local resp = assert(waiting:receive()) -- taken once the tunnel closed
      assert.is_number(resp.status)
    end)

    it("stops reading the upstream while the client does not read (backpressure), and loses nothing", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port)
      local c = proxy:connect()
      c.sock:setoption("recv-buffer-size", 65536)
      local total = 64 * 1024 * 1024
      assert(c:send(upgrade_request("/flood/64")))
      assert.are.equal(101, assert(c:receive()).status)
      -- Nothing is read: the upstream must get stuck well short of the end (without backpressure
      -- the proxy would take all 64 MiB into its memory and the upstream would report "done").
      local outcome = helpers.wait_for(function() return up.events():match("\n?((%a+) %d+)\n") end)
      local how, sent = outcome:match("^(%a+) (%d+)$")
      assert.are.equal("blocked", how, outcome)
      assert.is_true(tonumber(sent) < total / 2, outcome)
      -- Then everything arrives, in order.
      local unit = ("0123456789abcdef"):rep(4097)
      local got, piece = 0, c.buf
      c.buf = ""
      c.sock:settimeout(helpers.DEADLINE)
      while got < total do
        if piece == "" then piece = assert(c.sock:receive(math.min(65536, total - got))) end
        local at = got % 16
        if piece ~= unit:sub(at + 1, at + #piece) then error("the flood came back wrong at byte " .. got) end
        got = got + #piece
        piece = ""
      end
      assert.are.equal(total, got)
      up.wait_event("done (%d+)")
    end)

    it("closes a tunnel left idle for opts.tunnelTimeout, on both sides", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port, { PASS_TUNNEL_MS = 200 })
      local c = open_tunnel(proxy)
      assert.is_true(c:closed_by_peer())
      up.wait_event("eof /tunnel")
    end)

    it("passes an ordinary answer to an upgrade request on as it is, and closes the connection after it", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port)
      local c = proxy:connect()
      assert(c:send(upgrade_request("/refuse")))
      local resp = assert(c:receive())
      assert.are.equal(403, resp.status)
      assert.are.equal("no", resp.body)
      assert.is_true(c:closed_by_peer())
      proxy:wait_log("pass: 403 nil true")
    end)

    it("answers 502 to a 101 the request did not ask for", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port)
      local resp = assert(proxy:get("/unasked"))
      assert.are.equal(502, resp.status)
      proxy:wait_log("pass: nil upstream switched protocols false")
    end)

    it("closes its tunnels as soon as the worker drains, while a request still keeps the worker", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port, { PASS_TIMEOUT_MS = 120000 }, { "--grace", "60" })
      local c = open_tunnel(proxy)
      local hold = proxy:connect()
      assert(hold:send(helpers.build_request("GET", "/hold")))
      up.wait_event("request /hold")
      proxy:signal("TERM")
      assert.is_true(c:closed_by_peer())
      up.wait_event("eof /tunnel")
      assert.is_true(helpers.alive(proxy.workers[1])) -- still draining: the tunnel did not wait for it
    end)

    it("answers 503 to an upgrade whose 101 comes once the worker drains", function()
      local up = start_raw_upstream()
      local proxy = start_proxy(up.port, nil, { "--grace", "60" })
      local c = proxy:connect()
      assert(c:send(upgrade_request("/later")))
      up.wait_event("request /later")
      proxy:signal("TERM")
      proxy:wait_log("stopping")
      local release = assert(helpers.connect(up.port))
      assert.are.equal(200, assert(release:request("GET", "/release")).status)
      local resp = assert(c:receive())
      assert.are.equal(503, resp.status)
      proxy:wait_log("pass: nil draining false")
    end)
  end)
end)
