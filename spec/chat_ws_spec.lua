-- spec/chat_ws_spec.lua: the chat over WebSocket (examples/chat/server.lua, GET /ws?since=ID) over
-- real sockets: the same messages in the same global order as Server-Sent Events clients see,
-- resuming from ?since= after a reconnect, and a rolling reload under 1,000 open chat WebSockets in
-- which every one gets 1001, reconnects with its last id and misses nothing.
--
-- The small cases use a WebSocket client written here (luasocket, frames masked with a zero key,
-- which RFC 6455 allows), stepped by helpers.run_clients like the SSE readers. The reload case
-- drives 1,000 clients from bench/ws/wsload (C, epoll: a select() loop stops at 1,024 descriptors);
-- it prints "STATUS ..." lines that this spec polls, and exits once every client has seen the last
-- id it was told on its stdin.
local helpers = require "spec.helpers"
local cjson = require "cjson"
local socket = require "socket"

local CHAT = os.getenv("CHAT_SPEC_SCRIPT") or (helpers.ROOT .. "/examples/chat/server.lua")
local WSLOAD = helpers.ROOT .. "/bench/ws/wsload"
local decode, char, byte = helpers.json_decode, string.char, string.byte

-- Starts the chat with the fd limit raised to the hard limit (1,000 sockets and then some), through
-- a wrapper script in place of the binary, as helpers.start_env does for the environment (env: name ->
-- value, for the server).
local function start_chat(workers, extra, env)
  local dir = helpers.mktempdir()
  local wrapper = dir .. "/moonfork"
  local f = assert(io.open(wrapper, "w"))
  local vars = {}
  for k, v in pairs(env or {}) do vars[#vars + 1] = helpers.shell_quote(k .. "=" .. v) .. " " end
  table.sort(vars)
  f:write('#!/bin/sh\nulimit -n "$(ulimit -Hn)" 2>/dev/null\nexec env ' .. table.concat(vars)
    .. helpers.shell_quote(helpers.BIN) .. ' "$@"\n')
  f:close()
  os.execute("chmod +x " .. helpers.shell_quote(wrapper))
  local bin = helpers.BIN
  helpers.BIN = wrapper
  local args = { "--workers", tostring(workers or 2), "--keepalive-timeout", "120" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local ok, srv = pcall(helpers.start, CHAT, args)
  helpers.BIN = bin
  if not ok then error(srv, 2) end
  return srv
end

local function post(srv, user, text)
  local r, err = srv:request("POST", "/messages", { { "Content-Type", "application/json" } },
    cjson.encode({ user = user, text = text }))
  if not r then return nil, err end
  if r.status ~= 201 then return nil, r.status .. " " .. r.body end
  return decode(r.body).id
end

local function range(a, b)
  local out = {}
  for i = a, b do out[#out + 1] = i end
  return out
end

---------------------------------------------------------------------------------------------------
-- a WebSocket client

local function frame(op, payload)
  local n, len = #payload, nil
  if n < 126 then len = char(0x80 + n)
  elseif n < 65536 then len = char(0x80 + 126, math.floor(n / 256), n % 256)
  else error("frame too long for this client") end
  return char(0x80 + op) .. len .. "\0\0\0\0" .. payload -- masked, with the key 0
end

local WS = {}
WS.__index = WS

-- Sends the upgrade request for `path` on conn (a keep-alive connection may have served requests).
local function ws_client(conn, path)
  local cl = setmetatable({ conn = conn, msgs = {}, path = path, head = nil, closed = false }, WS)
  assert(conn:send(helpers.build_request("GET", path, {
    { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
    { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" }, { "Sec-WebSocket-Version", "13" } })))
  return cl
end

-- Takes whole frames out of the buffer; records text messages (decoded JSON) and the close code.
function WS:parse()
  local c = self.conn
  if not self.head then
    local e = c.buf:find("\r\n\r\n", 1, true)
    if not e then return end
    self.head = c.buf:sub(1, e - 1)
    c.buf = c.buf:sub(e + 4)
    assert.equal("101", self.head:match("^HTTP/1%.1 (%d%d%d)"), self.head)
  end
  while #c.buf >= 2 do
    local b1, b2 = byte(c.buf, 1, 2)
    local op, n, hl = b1 % 16, b2 % 128, 2
    assert(b2 < 128, "the server masked a frame")
    if n == 126 then
      if #c.buf < 4 then return end
      n, hl = byte(c.buf, 3) * 256 + byte(c.buf, 4), 4
    elseif n == 127 then error("a 64-bit frame length in the chat")
    end
    if #c.buf < hl + n then return end
    local data = c.buf:sub(hl + 1, hl + n)
    c.buf = c.buf:sub(hl + n + 1)
    assert(b1 >= 128, "a fragmented frame in the chat (each message fits one frame)")
    if op == 1 then
      self.msgs[#self.msgs + 1] = decode(data)
    elseif op == 9 then
      c:send(frame(10, data))
    elseif op == 8 then
      self.close_code = n >= 2 and byte(data, 1) * 256 + byte(data, 2) or 1005
      if not self.closing then c:send(frame(8, data:sub(1, 2))) end
      self.closed = true
      c:close()
      return
    end
  end
end

function WS:step()
  if self.closed then return end
  while self.conn:fill(helpers.now()) do end
  self:parse()
  if not self.closed and self.conn.eof then
    self.closed = true
    self.close_code = self.close_code or 1006
    self.conn:close()
  end
end

-- Starts the close handshake (1000) and waits for the server's close frame.
function WS:close()
  self.closing = true
  self.conn:send(frame(8, char(3, 232)))
  assert.is_true(helpers.run_clients({ self }, function() return self.closed end, 10), "no close frame came back")
end

function WS:ids()
  local out = {}
  for i, m in ipairs(self.msgs) do out[i] = m.id end
  return out
end

-- an SSE client for comparison
local SSE = {}
SSE.__index = SSE

local function sse_client(conn)
  assert(conn:send(helpers.build_request("GET", "/events", { { "Accept", "text/event-stream" } })))
  return setmetatable({ conn = conn, reader = helpers.sse_reader(conn), msgs = {}, closed = false }, SSE)
end

function SSE:step()
  if self.closed then return end
  while self.conn:fill(helpers.now()) do end
  for _, ev in ipairs(self.reader:read()) do
    if ev.data then self.msgs[#self.msgs + 1] = decode(ev.data) end
  end
  if self.conn.eof then self.closed = true end
end
SSE.ids = WS.ids

local function all_have(clients, n)
  return function()
    for _, cl in ipairs(clients) do if #cl.msgs < n then return false end end
    return true
  end
end

-- Sends a post on conn without waiting for its answer (read it with take_post).
local function send_post(conn, user, text)
  assert(conn:send(helpers.build_request("POST", "/messages", { { "Content-Type", "application/json" } },
    cjson.encode({ user = user, text = text }))))
end

local function take_post(conn)
  local r = assert(conn:receive())
  assert.equal(201, r.status, r.body)
  return decode(r.body).id
end

-- Each client's ids are exactly since+1 .. last, and each text is the one posted with that id.
local function assert_exact(clients, last, texts)
  for i, cl in ipairs(clients) do
    assert.are.same(range(cl.since + 1, last), cl:ids(), "client " .. i .. " (since " .. cl.since .. ")")
    for _, m in ipairs(cl.msgs) do assert.equal(texts[m.id], m.text, "client " .. i .. ", id " .. m.id) end
  end
end

-- The bytes the kernel holds to send on the server's end of client connection conn (the server
-- listens on `port`): /proc/net/tcp's tx_queue, or nil when the connection is not there.
local function kernel_send_queue(port, conn)
  local _, cport = conn.sock:getsockname()
  local pat = string.format(":%04X %%x+:%04X %%x%%x (%%x+):", port, tonumber(cport))
  local q = (helpers.read_file("/proc/net/tcp") or ""):match(pat)
  return q and tonumber(q, 16)
end

-- A connection whose receive buffer is as small as the kernel allows (a client that reads slowly
-- fills it, and then the server's send queue, after a few messages).
local function small_window_conn(port)
  local sock = assert(socket.tcp4())
  assert(sock:setoption("recv-buffer-size", 4096))
  sock:settimeout(helpers.DEADLINE)
  assert(sock:connect("127.0.0.1", port))
  return setmetatable({ sock = sock, buf = "", eof = false }, helpers.Conn)
end

---------------------------------------------------------------------------------------------------

describe("chat over WebSocket", function()
  after_each(function() helpers.stop_all() end)

  describe("GET /ws", function()
    it("gives WebSocket clients on both workers every post once, in the same order and content as SSE clients", function()
      local srv = start_chat(2)
      local clients, sse = {}, {}
      for i = 1, 4 do
        clients[i] = ws_client(helpers.conn_on(srv, i % 2 + 1, "/style.css", "HEAD"), "/ws?since=0")
      end
      for i = 1, 2 do sse[i] = sse_client(helpers.conn_on(srv, i, "/style.css", "HEAD")) end
      assert.is_true(helpers.run_clients(clients, function()
        for _, cl in ipairs(clients) do if not cl.head then return false end end
        return true
      end, 10), "not every WebSocket was upgraded")
      local posted = {}
      for i = 1, 30 do
        local id = assert(post(srv, "user" .. i % 3, "message " .. i))
        posted[id] = "message " .. i
      end
      local everyone = { clients[1], clients[2], clients[3], clients[4], sse[1], sse[2] }
      assert.is_true(helpers.run_clients(everyone, all_have(everyone, 30), 20), "not every client got 30 messages")
      for i, cl in ipairs(everyone) do
        assert.are.same(range(1, 30), cl:ids(), "client " .. i)
        for _, m in ipairs(cl.msgs) do
          assert.equal(posted[m.id], m.text)
          assert.is_number(m.time)
        end
        assert.are.same(sse[1].msgs, cl.msgs, "client " .. i .. " differs from an SSE client")
      end
    end)

    it("resumes from ?since=: a client that comes back with its last id gets what it missed, once", function()
      local srv = start_chat(2)
      local a = ws_client(srv:connect(), "/ws?since=0")
      for i = 1, 5 do assert(post(srv, "ann", "before " .. i)) end
      assert.is_true(helpers.run_clients({ a }, all_have({ a }, 5), 10))
      a:close()
      assert.equal(1000, a.close_code)
      for i = 1, 5 do assert(post(srv, "ann", "while away " .. i)) end
      local b = ws_client(srv:connect(), "/ws?since=" .. a.msgs[#a.msgs].id)
      local whole = ws_client(srv:connect(), "/ws?since=0")
      assert.is_true(helpers.run_clients({ b, whole }, all_have({ b, whole }, 5), 10))
      assert(post(srv, "ann", "after"))
      assert.is_true(helpers.run_clients({ b, whole }, function() return #b.msgs >= 6 and #whole.msgs >= 11 end, 10))
      assert.are.same(range(6, 11), b:ids())
      assert.equal("while away 1", b.msgs[1].text)
      assert.are.same(range(1, 11), whole:ids())
    end)

    -- The fan-out: in C (each socket joins the worker's channel once caught up from the log) by
    -- default, the Lua loop over sockets with CHAT_WS_FANOUT=lua; both must give the same result.
    for _, fanout in ipairs { "c", "lua" } do
    it("gives every socket on both workers each of many messages once and in order, posted from both (" .. fanout .. ")", function()
      local srv = start_chat(2, nil, { CHAT_WS_FANOUT = fanout })
      local clients = {}
      for i = 1, 6 do
        clients[i] = ws_client(helpers.conn_on(srv, i % 2 + 1, "/style.css", "HEAD"), "/ws?since=0")
        clients[i].since = 0
      end
      assert.is_true(helpers.run_clients(clients, function()
        for _, cl in ipairs(clients) do if not cl.head then return false end end
        return true
      end, 10), "not every WebSocket was upgraded")
      -- 300 posts, four in flight at a time on connections held by both workers
      local posters = {}
      for i = 1, 4 do posters[i] = helpers.conn_on(srv, i % 2 + 1, "/style.css", "HEAD") end
      local texts, last, n = {}, 0, 0
      for _ = 1, 75 do
        local sent = {}
        for i, p in ipairs(posters) do
          n = n + 1
          sent[i] = "message " .. n
          send_post(p, "user" .. i, sent[i])
        end
        for i, p in ipairs(posters) do
          local id = take_post(p)
          texts[id] = sent[i]
          last = math.max(last, id)
        end
        for _, cl in ipairs(clients) do cl:step() end
      end
      assert.equal(300, last)
      assert.is_true(helpers.run_clients(clients, all_have(clients, last), 30), "not every client got " .. last .. " messages")
      assert_exact(clients, last, texts)
    end)

    it("gives a socket that connects while messages are being posted each message after its ?since= exactly once (" .. fanout .. ")", function()
      local srv = start_chat(2, nil, { CHAT_WS_FANOUT = fanout })
      local pool = {} -- connections held by each worker, upgraded one at a time between posts
      for i = 1, 16 do pool[i] = helpers.conn_on(srv, i % 2 + 1, "/style.css", "HEAD") end
      local posters = {}
      for i = 1, 4 do posters[i] = helpers.conn_on(srv, i % 2 + 1, "/style.css", "HEAD") end
      local clients, texts, last, n = {}, {}, 0, 0
      local function post_round()
        local sent = {}
        for i, p in ipairs(posters) do
          n = n + 1
          sent[i] = "message " .. n
          send_post(p, "user" .. i, sent[i])
        end
        return function()
          for i, p in ipairs(posters) do
            local id = take_post(p)
            texts[id] = sent[i]
            last = math.max(last, id)
          end
        end
      end
      for r = 1, 16 do
        -- four posts are on their way while this socket upgrades, catches up and joins. It asks for
        -- everything, or what follows a few ids back, or the newest id acknowledged so far (which its
        -- worker may not have yet), or two ids past that (a position past every worker's newest
        -- message, which the channel's members do not share: it must not be sent the two before it)
        local answers = post_round()
        local since = ({ 0, math.max(0, last - 3), last, last + 2 })[r % 4 + 1]
        local cl = ws_client(pool[r], "/ws?since=" .. since)
        cl.since = since
        clients[#clients + 1] = cl
        answers()
        for _, c in ipairs(clients) do c:step() end
      end
      for _ = 1, 5 do post_round()() end
      assert.equal(84, last)
      assert.is_true(helpers.run_clients(clients, function()
        for _, cl in ipairs(clients) do
          if #cl.msgs < last - cl.since then return false end
        end
        return true
      end, 30), "not every client reached id " .. last)
      -- and nothing more comes: one more post is each one's next message
      local final = assert(post(srv, "final", "the last one"))
      texts[final] = "the last one"
      assert.is_true(helpers.run_clients(clients, function()
        for _, cl in ipairs(clients) do
          if #cl.msgs < final - cl.since then return false end
        end
        return true
      end, 30), "not every client got the final message")
      assert_exact(clients, final, texts)
    end)
    end

    it("closes a member that does not read with 1008 once its queue is over the high-water mark; it resumes with ?since= its last id and misses nothing", function()
      local srv = start_chat(1)
      local slow = ws_client(small_window_conn(srv.port), "/ws?since=0")
      local fast = ws_client(srv:connect(), "/ws?since=0")
      assert.is_true(helpers.run_clients({ slow, fast }, function() return slow.head and fast.head end, 10))
      -- messages of about 2,000 four-byte characters (8 KB), which `fast` reads as they come and `slow`
      -- does not read at all, posted until the kernel's send queue for `slow` has not grown for 64
      -- posts in a row: the last 512 KB (at least 63 of them: a post is answered just before its
      -- message is written to the members) went to the server's own queue, over its 256 KiB mark
      -- (unless `slow` was closed before). (The kernel's queue for it can grow for a while after it
      -- first stops: its buffer grows as it goes.)
      local text = string.rep("\240\159\152\128", 1990)
      local texts, poster, n, queued, flat = {}, srv:connect(), 0, -1, 0
      while flat < 64 and n < 5000 do
        n = n + 1
        send_post(poster, "flood", text .. n)
        texts[take_post(poster)] = text .. n
        fast:step()
        local q = assert(kernel_send_queue(srv.port, slow.conn), "the slow connection is not in /proc/net/tcp")
        flat = q == queued and flat + 1 or 0
        queued = q
      end
      assert.is_true(helpers.run_clients({ fast }, all_have({ fast }, n), 30), "the reader did not get " .. n .. " messages")
      -- now `slow` reads: a prefix of the messages, then the close frame
      assert.is_true(helpers.run_clients({ slow }, function() return slow.closed end, 30),
        "the slow member was not closed; it got " .. #slow.msgs .. " of " .. n)
      assert.equal(1008, slow.close_code)
      local got = #slow.msgs
      assert.is_true(got < n, "the slow member got every message before it was closed")
      slow.since, fast.since = 0, 0
      assert_exact({ slow }, got, texts)
      -- as the page does: back with its last id
      local back = ws_client(srv:connect(), "/ws?since=" .. got)
      back.since = got
      assert.is_true(helpers.run_clients({ back }, all_have({ back }, n - got), 30))
      assert.equal(n + 1, assert(post(srv, "after", "after")))
      texts[n + 1] = "after"
      assert.is_true(helpers.run_clients({ back, fast }, function()
        return #back.msgs >= n + 1 - got and #fast.msgs >= n + 1
      end, 30))
      assert_exact({ back, fast }, n + 1, texts)
    end)

    it("answers a bad ?since= with 400 and a JSON error, without upgrading", function()
      local srv = start_chat(1)
      local c = srv:connect()
      local r = assert(c:request("GET", "/ws?since=abc", {
        { "Upgrade", "websocket" }, { "Connection", "Upgrade" },
        { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" }, { "Sec-WebSocket-Version", "13" } }))
      assert.equal(400, r.status)
      assert.is_string(decode(r.body).error)
    end)
  end)

  describe("on a Redis Stream (--redis)", function()
    it("sends the stream's ids in stream order to WebSocket and SSE clients, and resumes from a stream id", function()
      local redis_server = require "spec.redis_server"
      local r = redis_server.start({})
      local ok, failure = pcall(function()
        local srv = start_chat(2, { "--redis", "redis://127.0.0.1:" .. r.port })
        local a, b = ws_client(srv:connect(), "/ws?since=0"), ws_client(srv:connect(), "/ws?since=0")
        local s = sse_client(srv:connect())
        assert.is_true(helpers.run_clients({ a, b }, function() return a.head and b.head end, 10))
        local ids = {}
        for i = 1, 10 do ids[i] = assert(post(srv, "ann", "hello " .. i)) end
        assert.matches("^%d+%-%d+$", ids[1])
        local all = { a, b, s }
        assert.is_true(helpers.run_clients(all, all_have(all, 10), 20), "not every client got 10 messages")
        for _, cl in ipairs(all) do assert.are.same(ids, cl:ids()) end
        local c = ws_client(srv:connect(), "/ws?since=" .. ids[7])
        assert.is_true(helpers.run_clients({ c }, all_have({ c }, 3), 10))
        assert.are.same({ ids[8], ids[9], ids[10] }, c:ids())
        assert.equal("hello 8", c.msgs[1].text)
      end)
      helpers.stop_all()
      redis_server.stop(r)
      assert(ok, failure)
    end)
  end)

  describe("a reload", function()
    it("closes 1,000 open chat WebSockets with 1001; each reconnects with its last id and misses no message posted before, during or after it", function()
      local N = tonumber(os.getenv("CHAT_WS_RELOAD_CLIENTS") or "") or 1000
      local srv = start_chat(2)
      local dir = helpers.mktempdir()
      local out, err = dir .. "/wsload.out", dir .. "/wsload.err"
      local driver = assert(io.popen(string.format("%s chat --port %d --conns %d --want-1001 >%s 2>%s",
        helpers.shell_quote(WSLOAD), srv.port, N, helpers.shell_quote(out), helpers.shell_quote(err)), "w"))
      local function status()
        local last
        for line in (helpers.read_file(out) or ""):gmatch("[^\n]+") do
          if line:match("^STATUS ") or line:match("^DONE ") then last = line end
        end
        if not last then return nil end
        local st = { line = last }
        for k, v in last:gmatch("(%w+)=(%-?%d+)") do st[k] = tonumber(v) end
        return st
      end
      local function wait_status(what, cond, timeout)
        local st = helpers.wait_for(function()
          local s = status()
          return s and cond(s) and s
        end, timeout or 60)
        assert(st, what .. "; driver: " .. tostring((status() or {}).line) .. "\n" .. (helpers.read_file(err) or ""))
        return st
      end
      local ok, failure = pcall(function()
        wait_status("not every client opened", function(s) return s.open == N end)
        local last = 0
        for i = 1, 20 do last = assert(post(srv, "before", "before the reload " .. i)) end
        wait_status("the clients did not get the first messages", function(s) return s.minlast == last end)

        srv:signal("HUP")
        local during, until_t = 0, helpers.now() + 60
        while srv:count_log("reload done") == 0 and during < 300 and helpers.now() < until_t do
          local id = post(srv, "during", "during the reload " .. during)
          if id then
            last = math.max(last, id)
            during = during + 1
          end
        end
        srv:wait_log("reload done: 2 workers replaced", 1, 60)
        assert.is_true(during > 0, "no message was posted while the reload ran")
        wait_status("not every client got a 1001 and came back",
          function(s) return s.clients1001 == N and s.open == N end)
        for i = 1, 20 do last = assert(post(srv, "after", "after the reload " .. i)) end
        driver:write("end " .. last .. "\n")
        driver:flush()
        local done = wait_status("the clients did not all reach id " .. last, function(s) return s.line:match("^DONE") end)
        assert.equal(0, done.gaps, done.line)
        assert.equal(0, done.dups, done.line)
        assert.equal(N, done.clients1001, done.line)
      end)
      local _, how, code = driver:close()
      assert(ok, failure)
      local result = (helpers.read_file(out) or ""):match("RESULT (%b{})")
      assert(result, "the driver printed no RESULT")
      local r = decode(result)
      assert.equal(0, r.clients_with_gaps_or_dups)
      assert.equal(0, r.clients_without_1001)
      assert.is_true(how == "exit" and code == 0 or how == nil, "the driver exited with " .. tostring(code))
    end)
  end)
end)
