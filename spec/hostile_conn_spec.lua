-- spec/hostile_conn_spec.lua: a connection against hostile clients and careless handlers (issue 13):
-- pipelined input is held only up to a limit, large responses reach slow readers whole, a client that
-- reads nothing is closed after --send-timeout, a handler's Content-Length is held to, a writer that
-- ignores "slow down" is stopped, and the size options have bounds the code can hold.
local helpers = require "spec.helpers"
local socket = require "socket"

local MiB = 1024 * 1024
local q = helpers.shell_quote

-- A connection whose receive buffer is small (set before connecting), so the reader's pace is what
-- the server sees. Closed by close_all.
local mine = {}
local function connect_small(port, rcvbuf)
  local sock = assert(socket.tcp4())
  assert(sock:setoption("recv-buffer-size", rcvbuf or 16384))
  sock:settimeout(helpers.DEADLINE)
  assert(sock:connect("127.0.0.1", port))
  local c = setmetatable({ sock = sock, buf = "", eof = false }, helpers.Conn)
  mine[#mine + 1] = c
  return c
end

local function close_all()
  for _, c in ipairs(mine) do c:close() end
  mine = {}
end

local fd_count = helpers.fd_count

-- Reads the status line and headers of a response (the body stays unread).
local function read_head(c)
  local r = { headers = {} }
  local line = assert(c:read_line(helpers.now() + helpers.DEADLINE))
  r.status = tonumber(line:match("^HTTP/1%.1 (%d+)"))
  while true do
    local h = assert(c:read_line(helpers.now() + helpers.DEADLINE))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    r.headers[k:lower()] = v
  end
  return r
end

-- The body /big?mib=n sends (the fixture's numbered lines).
local function big_body(n)
  local lines, pad = {}, string.rep("y", 48)
  for i = 1, n * MiB / 64 do lines[i] = string.format("%015d", i) .. pad .. "\n" end
  return table.concat(lines)
end

-- Reads `size` body bytes slowly: 64 KiB at most per read, a pause after each. Returns the bytes read
-- (fewer when the server closed first) and the seconds it took.
local function read_slowly(c, size)
  local parts, got, t0 = { c.buf }, #c.buf, helpers.now()
  c.buf = ""
  c.sock:settimeout(helpers.DEADLINE)
  while got < size do
    local piece, err, partial = c.sock:receive(math.min(65536, size - got))
    piece = piece or partial
    if piece and #piece > 0 then
      parts[#parts + 1] = piece
      got = got + #piece
    end
    if err then break end
    socket.sleep(0.02)
  end
  return table.concat(parts), helpers.now() - t0
end

-- The receive and send queues (bytes) of the TCP socket from local port `lport` to `rport`, or nil.
local function tcp_queues(lport, rport)
  if os.execute("command -v ss >/dev/null 2>&1") == true then -- /proc/net/tcp can be megabytes
    local p = io.popen(string.format("ss -Htn state established '( sport = :%d and dport = :%d )' 2>/dev/null",
      lport, rport))
    local out = p:read("*a")
    p:close()
    local rx, tx = out:match("^%s*(%d+)%s+(%d+)")
    return tonumber(rx), tonumber(tx)
  end
  local pat = string.format("\n%%s*%%d+: %%x+:%04X %%x+:%04X 01 (%%x+):(%%x+)", lport, rport)
  local tx, rx = (helpers.read_file("/proc/net/tcp") or ""):match(pat)
  return rx and tonumber(rx, 16), tx and tonumber(tx, 16)
end

-- True once everything client c sent has been read by the worker: nothing in the client's send queue
-- nor in the server side's receive queue.
local function all_read(srv, c)
  local _, cport = c.sock:getsockname()
  cport = tonumber(cport)
  local _, ctx = tcp_queues(cport, srv.port)
  local srx = tcp_queues(srv.port, cport)
  return ctx == 0 and srx == 0
end

local function urlencode(s)
  return (s:gsub("[^%w%-_%.]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

describe("hostile connections", function()
  after_each(function()
    close_all()
    helpers.stop_all()
  end)

  describe("pipelined input", function()
    it("stops reading at the limit while a handler waits, and the worker still answers others", function()
      local srv = helpers.start("conn_app", { "--workers", "1" })
      local pid = srv.workers[1]
      local rss0 = assert(helpers.rss_kib(pid))
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/wait?key=p")))
      srv:wait_log("wait started p")
      -- Push up to 64 MiB behind it for as long as the socket takes them. A server that stops
      -- reading leaves the socket unwritable; then we stop (this wait only ends the loop: a server
      -- that reads on would just have taken more).
      local junk, TOTAL = string.rep("z", 65536), 64 * MiB
      local sent, off, peak = 0, 1, rss0
      c.sock:settimeout(0)
      while sent < TOTAL do
        local n, err, last = c.sock:send(junk, off)
        local upto = n or last or (off - 1)
        sent = sent + (upto - off + 1)
        off = upto + 1
        if off > #junk then off = 1 end
        if err == "closed" then break end
        if err then
          local _, w = socket.select(nil, { c.sock }, 2)
          if not w or #w == 0 then break end
        end
        peak = math.max(peak, helpers.rss_kib(pid) or 0)
      end
      peak = math.max(peak, helpers.rss_kib(pid) or 0)
      local grew = (peak - rss0) / 1024
      assert.is_true(grew < 16, string.format("worker RSS grew by %.1f MiB while a client pushed %.1f MiB "
        .. "behind a waiting request", grew, sent / MiB))
      assert.is_true(sent < TOTAL, "the server read all 64 MiB behind a waiting request")
      -- others are served meanwhile, and the waiting request is answered once released
      local r = assert(srv:get("/release?key=p"))
      assert.equal(200, r.status)
      c.sock:settimeout(helpers.DEADLINE)
      local resp = assert(c:receive())
      assert.equal("released p", resp.body)
      assert.equal("Hello, World!\n", assert(srv:get("/")).body)
      assert.is_true(helpers.alive(pid))
    end)
  end)

  describe("a large response to a slow reader", function()
    local SIZE = 20 * MiB

    local function slow_read(close, args)
      local argv = { "--workers", "1", "--keepalive-timeout", "1" }
      for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
      local srv = helpers.start("conn_app", argv)
      local want = big_body(20)
      local c = connect_small(srv.port)
      local headers = close and { { "Connection", "close" } } or nil
      assert(c:send(helpers.build_request("GET", "/big?mib=20", headers)))
      local head = read_head(c)
      assert.equal(200, head.status)
      assert.equal(tostring(SIZE), head.headers["content-length"])
      local body, took = read_slowly(c, SIZE)
      assert.equal(SIZE, #body, string.format("got %.1f of 20 MiB in %.1f s", #body / MiB, took))
      assert.is_true(body == want, "the body differs from what was sent")
      -- the reading outlasted --keepalive-timeout and the 2 s linger; the connection is still in step
      assert.is_true(took > 3, string.format("the slow read took only %.1f s", took))
      return srv, c
    end

    it("arrives whole over a keep-alive connection although reading it outlasts --keepalive-timeout", function()
      local _, c = slow_read(false)
      -- idle from the moment the last byte left the worker: closed cleanly after --keepalive-timeout
      assert.is_true(c:closed_by_peer())
    end)

    it("arrives whole with Connection: close, and the connection then closes", function()
      local _, c = slow_read(true)
      assert.is_true(c:closed_by_peer())
    end)

    it("is never cut off by --send-timeout while the reader keeps reading", function()
      local srv = slow_read(false, { "--send-timeout", "2" }) -- the read takes three times as long
      assert.equal(0, srv:count_log("read nothing"), srv:log_text())
    end)
  end)

  describe("an idle keep-alive connection", function()
    it("answers a request sent in time although a blocked loop let its --keepalive-timeout pass", function()
      local srv = helpers.start("conn_app", { "--workers", "1", "--keepalive-timeout", "1" })
      local flag = os.tmpname()
      os.remove(flag)
      local idle = srv:connect()
      assert.equal(200, assert(idle:request("GET", "/")).status) -- idle from here, 1 s to live
      local blocker = srv:connect()
      assert(blocker:send(helpers.build_request("GET", "/stall?file=" .. flag)))
      srv:wait_log("stall started") -- the worker's loop is held up from here
      assert(idle:send(helpers.build_request("POST", "/", { ["Content-Length"] = "2" }, "hi")))
      assert(io.open(flag, "w")):close() -- the worker runs on 1.2 s more, past the idle deadline
      local resp, err = idle:receive()
      os.remove(flag)
      assert.is_truthy(resp, "the request waiting on the idle connection was not answered: " .. tostring(err))
      assert.equal(200, resp.status)
      assert.equal("stalled", assert(blocker:receive()).body)
      idle:close()
      blocker:close()
    end)
  end)

  describe("--send-timeout", function()
    it("closes a client that reads none of a Lua response and releases its socket", function()
      local srv = helpers.start("conn_app", { "--workers", "1", "--send-timeout", "1" })
      local pid = srv.workers[1]
      local fds0 = assert(fd_count(pid))
      local c = connect_small(srv.port)
      assert(c:send(helpers.build_request("GET", "/big?mib=20")))
      srv:wait_log("big queued")
      assert.is_truthy(helpers.wait_for(function() return fd_count(pid) == fds0 end, 20),
        "the worker still holds the socket of a client that reads nothing; log:\n" .. srv:log_text())
      srv:wait_log("read nothing for 1%.0 s")
      assert.equal("Hello, World!\n", assert(srv:get("/")).body)
    end)

    it("closes a client that reads none of a static file and releases the socket and the file", function()
      local root = helpers.mktempdir()
      assert(helpers.sh("head -c " .. 20 * MiB .. " /dev/zero > " .. q(root .. "/big.bin")))
      local ok, err = pcall(function()
        local srv = helpers.start_env("static_app", { "--workers", "1", "--send-timeout", "1" }, { STATIC_DIR = root })
        local pid = srv.workers[1]
        local fds0 = assert(fd_count(pid))
        local c = connect_small(srv.port)
        assert(c:send(helpers.build_request("GET", "/big.bin")))
        assert.equal(200, read_head(c).status)
        assert.is_truthy(helpers.wait_for(function() return fd_count(pid) == fds0 end, 20),
          "the worker still holds the socket or the file of a client that reads nothing; log:\n" .. srv:log_text())
        srv:wait_log("read nothing for 1%.0 s")
      end)
      helpers.sh("rm -rf " .. q(root))
      assert(ok, err)
    end)
  end)

  describe("a handler's Content-Length", function()
    it("is never exceeded: the rest is dropped and logged, and the next response is the real one", function()
      local srv = helpers.start("conn_app", { "--workers", "1" })
      local forged = "HTTP/1.1 299 Forged\r\nContent-Length: 0\r\n\r\n"
      for _, parts in ipairs({ 1, 3 }) do
        local c = srv:connect()
        local r = assert(c:request("GET", "/clen?declared=10&parts=" .. parts .. "&body="
          .. urlencode("0123456789" .. forged)))
        assert.equal(200, r.status)
        assert.equal("0123456789", r.body)
        local r2 = assert(c:request("GET", "/"))
        assert.equal(200, r2.status)
        assert.equal("Hello, World!\n", r2.body)
        c:close()
      end
      srv:wait_log("longer than its Content%-Length %(10%)", 2)
    end)

    it("closes the connection, logged, when the body ends short of it", function()
      local srv = helpers.start("conn_app", { "--workers", "1", "--keepalive-timeout", "120" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/clen?declared=100&body=short")))
      local head = read_head(c)
      assert.equal("100", head.headers["content-length"])
      local rest = c:read_until_close(20)
      assert.equal("short", rest, "the connection was not closed after a short body")
      srv:wait_log("95 bytes short of its Content%-Length %(100%)")
    end)
  end)

  describe("the response write queue", function()
    it("closes the connection, logged, once a handler that ignores write()'s false has 64 MiB queued", function()
      local srv = helpers.start("conn_app", { "--workers", "1" })
      local c = connect_small(srv.port)
      assert(c:send(helpers.build_request("GET", "/flood-ignore?n=100")))
      local line = srv:wait_log("flood%-ignore")
      local n = tonumber(line:match("stopped: write (%d+)"))
      assert.is_truthy(n, "the handler queued all 100 MiB: " .. line)
      assert.is_true(n > 60 and n < 100, line)
      srv:wait_log("the handler ignored write%(%)'s false")
      assert.equal("Hello, World!\n", assert(srv:get("/")).body)
    end)
  end)

  describe("request bodies", function()
    it("answers 503 to a new body while others fill --max-body-memory, and serves it once they are done", function()
      local srv = helpers.start("conn_app", { "--workers", "1", "--max-body-memory", "1m", "--max-body", "1m" })
      local a = srv:connect()
      -- a body of 700 KiB, of which 600 KiB arrive; the rest waits
      assert(a:send("POST /size HTTP/1.1\r\nHost: x\r\nContent-Length: " .. 700 * 1024 .. "\r\n\r\n"
        .. string.rep("a", 600 * 1024)))
      assert.is_truthy(helpers.wait_for(function() return all_read(srv, a) end), "the worker did not read the body")
      -- another body that would take the worker past 1 MiB: refused at once, with its length known...
      local r = assert(srv:request("POST", "/size", {}, string.rep("b", 700 * 1024)))
      assert.equal(503, r.status)
      -- ...and chunked, as it grows
      r = assert(srv:request("POST", "/size", { { "Transfer-Encoding", "chunked" } },
        helpers.chunked({ string.rep("c", 300 * 1024), string.rep("c", 300 * 1024) })))
      assert.equal(503, r.status)
      srv:wait_log("refused with 503")
      -- requests without a body, and the first body itself, go on
      assert.equal("Hello, World!\n", assert(srv:get("/")).body)
      assert(a:send(string.rep("a", 100 * 1024)))
      assert.equal("body " .. 700 * 1024, assert(a:receive()).body)
      -- its bytes have left the budget
      r = assert(srv:request("POST", "/size", {}, string.rep("b", 700 * 1024)))
      assert.equal("body " .. 700 * 1024, r.body)
    end)

    it("answers 408 when a body trickles in past --body-timeout, each piece within --header-timeout", function()
      local srv = helpers.start("conn_app", { "--workers", "1", "--body-timeout", "1", "--header-timeout", "10" })
      local c = srv:connect()
      assert(c:send("POST /size HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"))
      local sent = 0
      while sent < 1000 and #c.buf == 0 and not c.eof do -- a piece every 0.2 s, until answered
        if not c:send(string.rep("t", 10)) then break end
        sent = sent + 10
        c:fill(helpers.now() + 0.2)
      end
      local r = assert(c:receive())
      assert.equal(408, r.status, "answered " .. tostring(r.status) .. " after " .. sent .. " bytes")
    end)
  end)

  describe("size options", function()
    local function usage_error(args, what)
      local status, out, err = helpers.run(args)
      assert.equal(2, status, "exit status; stderr: " .. err)
      assert.equal("", out)
      assert.is_truthy(err:find("moonfork: bad value for " .. what, 1, true), err)
      return err
    end

    it("refuses --max-body over 1g and --max-header-size over 1m on the command line", function()
      local app = helpers.fixture("conn_app")
      local err = usage_error({ "--port", "0", "--max-body", "2g", app }, "max-body")
      assert.is_truthy(err:find("1g", 1, true), err)
      err = usage_error({ "--port", "0", "--max-header-size", "2m", app }, "max-header-size")
      assert.is_truthy(err:find("1m", 1, true), err)
      usage_error({ "--port", "0", "--max-body", "1073741825", app }, "max-body")
    end)

    it("refuses them in listen() with a clear error", function()
      local dir = helpers.mktempdir()
      for _, opt in ipairs({ 'maxBody = "2g"', "maxHeaderSize = 2097152" }) do
        local script = dir .. "/big_limits.lua"
        helpers.write_file(script, 'local moonfork = require "moonfork"\n'
          .. "moonfork.listen({ port = 0, " .. opt .. " }, moonfork.http.createServer(function(req, res)\n"
          .. '  res:finish("x")\nend))\n')
        local status, _, err = helpers.run({ "--port", "0", "--workers", "1", script })
        assert.equal(1, status, err)
        local name = opt:match("^(%w+)")
        assert.is_truthy(err:find("moonfork: ", 1, true), err)
        assert.is_truthy(err:find("listen(): option " .. name .. ": bad value", 1, true), err)
      end
      helpers.sh("rm -rf " .. q(dir))
    end)

    it("accepts the bounds themselves", function()
      local srv = helpers.start("conn_app", { "--workers", "1", "--max-body", "1g", "--max-header-size", "1m" })
      assert.equal("Hello, World!\n", assert(srv:get("/")).body)
    end)
  end)
end)
