-- spec/chat_spec.lua: the comet chat (examples/chat/server.lua) over real sockets: posting and
-- validation, long polls, Server-Sent Events, history and reconnection with Last-Event-ID, and one
-- global message order that survives a SIGKILLed worker or leader.
--
-- Clients are driven by one select() loop: an SSE client parses "id:"/"data:" events out of the
-- chunked stream; a long-poller loops GET /poll?since=LAST on its keep-alive connection. Each client
-- has its own TCP connection, picked (with helpers.worker_of) so that they spread over the workers.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local CHAT = os.getenv("CHAT_SPEC_SCRIPT") or (helpers.ROOT .. "/examples/chat/server.lua") -- (override: to test a changed copy)
local decode = helpers.json_decode

-- A long keep-alive timeout: a client the test is not stepping for a while (it is busy picking
-- connections or posting) must not be dropped as idle.
local function start_chat(workers, env)
  return helpers.start_env(CHAT, { "--workers", tostring(workers or 2), "--keepalive-timeout", "120" }, env or {})
end

-- A keep-alive connection held by worker `id`.
local function conn_on(srv, id)
  return helpers.conn_on(srv, id, "/style.css", "HEAD")
end

local function post_on(c, user, text)
  local body = cjson.encode({ user = user, text = text })
  local r, err = c:request("POST", "/messages", { { "Content-Type", "application/json" } }, body)
  assert(r, "POST /messages: " .. tostring(err))
  return r
end

-- POSTs a message that must be accepted; returns its id.
local function post_ok(c, user, text)
  local r = post_on(c, user, text)
  assert.equal(201, r.status, r.body)
  assert.matches("application/json", r.headers["content-type"], 1, true)
  local id = decode(r.body).id
  assert.is_number(id)
  return id
end

local function get_list(c, path)
  local r = assert(c:request("GET", path))
  assert.equal(200, r.status, r.body)
  assert.matches("application/json", r.headers["content-type"], 1, true)
  return decode(r.body).messages
end

local function ids_of(msgs)
  local out = {}
  for i, m in ipairs(msgs) do out[i] = m.id end
  return out
end

local function range(a, b)
  local out = {}
  for i = a, b do out[#out + 1] = i end
  return out
end

---------------------------------------------------------------------------------------------------
-- clients driven by one loop

local Client = {}
Client.__index = Client

-- kind: "sse" or "poll"; records every message received, across reconnects, in cl.msgs.
-- An SSE client asks for `path` (default "/events", with Last-Event-ID when `last` > 0).
local function new_client(kind, conn, last, path)
  local cl = setmetatable({ kind = kind, msgs = {}, last = last or 0, comments = {}, want = math.huge,
    connects = 0, path = path }, Client)
  cl:attach(conn)
  return cl
end

function Client:attach(conn)
  self.conn, self.closed, self.inflight = conn, false, false
  self.head_done, self.reader = false, helpers.sse_reader(conn)
  self.connects = self.connects + 1
  if self.kind == "sse" then
    local hdrs = { { "Accept", "text/event-stream" } }
    if self.last > 0 then hdrs[#hdrs + 1] = { "Last-Event-ID", tostring(self.last) } end
    assert(conn:send(helpers.build_request("GET", self.path or "/events", hdrs)))
  else
    self:poll()
  end
end

function Client:poll()
  if self.inflight or #self.msgs >= self.want then return end
  assert(self.conn:send(helpers.build_request("GET", "/poll?since=" .. self.last)))
  self.inflight = true
end

function Client:record(id, m)
  assert.equal(id, m.id, "SSE id: line and the message's id differ")
  self.msgs[#self.msgs + 1] = m
  self.last = m.id
end

function Client:sse_process()
  local reader = self.reader
  local events = reader:read()
  if reader.head and not self.head_done then
    assert.equal("200", reader.head:match("^HTTP/1%.%d (%d%d%d)"), reader.head)
    assert.truthy(reader.head:lower():find("\r\ncontent%-type: text/event%-stream"), reader.head)
    self.head_done = true
  end
  self.ended = reader.ended
  for _, ev in ipairs(events) do
    for _, line in ipairs(ev.comments) do self.comments[#self.comments + 1] = line end
    if ev.data then self:record(ev.id, decode(ev.data)) end
  end
end

function Client:poll_process()
  local c = self.conn
  if self.inflight then
    if not c.buf:find("\r\n\r\n", 1, true) then return end
    local r, err = c:receive({ timeout = 10 })
    assert(r, "poll response: " .. tostring(err))
    assert.equal(200, r.status, r.body)
    self.inflight = false
    for _, m in ipairs(decode(r.body).messages) do self:record(m.id, m) end
  end
  self:poll()
end

-- Reads what has arrived (without blocking) and acts on it.
function Client:step()
  if self.closed then return end
  local c = self.conn
  while c:fill(helpers.now()) do end
  if self.kind == "sse" then self:sse_process() else self:poll_process() end
  if c.eof then
    self.closed = true
    c:close()
  end
end

local function all_have(clients, n)
  return function()
    for _, cl in ipairs(clients) do if #cl.msgs < n then return false end end
    return true
  end
end

local function describe_clients(clients)
  local out = {}
  for i, cl in ipairs(clients) do
    local ids = ids_of(cl.msgs)
    out[#out + 1] = string.format("client %d (%s, %d connects%s): %d msgs, last %s", i, cl.kind,
      cl.connects, cl.closed and (", closed: " .. tostring(cl.conn.eof_err)) or "", #ids, tostring(ids[#ids]))
  end
  return table.concat(out, "\n")
end

-- Each client got exactly the messages 1..n, once each, in id order, with the posted content.
local function assert_all_got(clients, n, posted)
  for i, cl in ipairs(clients) do
    assert.are.same(range(1, n), ids_of(cl.msgs), "client " .. i .. " (" .. cl.kind .. ")")
    for _, m in ipairs(cl.msgs) do
      assert.equal(posted[m.id].user, m.user)
      assert.equal(posted[m.id].text, m.text)
      assert.is_number(m.time)
    end
  end
end

---------------------------------------------------------------------------------------------------

describe("chat", function()
  after_each(function() helpers.stop_all() end)

  describe("POST /messages", function()
    it("answers 201 {id} with ids one apart, across connections to different workers", function()
      local srv = start_chat(2)
      local c1, c2 = conn_on(srv, 1), conn_on(srv, 2)
      local ids = {}
      for i = 1, 10 do
        ids[i] = post_ok(i % 2 == 1 and c1 or c2, "ann", "message " .. i)
      end
      assert.are.same(range(1, 10), ids)
      local r = post_on(c1, "ann", "eleven")
      assert.equal('{"id":11}', r.body)
      local msgs = get_list(c2, "/messages?since=0")
      assert.are.same(range(1, 11), ids_of(msgs))
      assert.equal("message 3", msgs[3].text)
      assert.equal("ann", msgs[3].user)
      assert.is_number(msgs[3].time)
    end)

    it("rejects bad posts with 400 JSON errors and broadcasts none of them", function()
      local srv = start_chat(2)
      local c1, c2 = conn_on(srv, 1), conn_on(srv, 2)
      local sse = new_client("sse", conn_on(srv, 2))
      assert.equal(1, post_ok(c1, "ann", "first"))
      assert.is_true(helpers.run_clients({ sse }, all_have({ sse }, 1), 10))
      local before = get_list(c2, "/messages?since=0")

      local e2001, e2000 = string.rep("é", 2001), string.rep("é", 2000) -- 2 bytes each
      local u65, u64 = string.rep("ü", 65), string.rep("ü", 64)
      local bad = {
        { "bad JSON", '{"user": "ann", "text": ' },
        { "not JSON at all", "hello" },
        { "an array", '["ann", "hi"]' },
        { "a string", '"hi"' },
        { "a number", "42" },
        { "an empty body", "" },
        { "missing user", '{"text": "hi"}' },
        { "missing text", '{"user": "ann"}' },
        { "empty user", '{"user": "", "text": "hi"}' },
        { "empty text", '{"user": "ann", "text": ""}' },
        { "whitespace-only text", '{"user": "ann", "text": "  \\t\\n  "}' },
        { "whitespace-only user", '{"user": "   ", "text": "hi"}' },
        { "a number as text", '{"user": "ann", "text": 5}' },
        { "text of 2001 characters", cjson.encode({ user = "ann", text = e2001 }) },
        { "text of 2001 ASCII characters", cjson.encode({ user = "ann", text = string.rep("x", 2001) }) },
        { "user of 65 characters", cjson.encode({ user = u65, text = "hi" }) },
      }
      for i, case in ipairs(bad) do
        local c = i % 2 == 1 and c1 or c2
        local r = assert(c:request("POST", "/messages", { { "Content-Type", "application/json" } }, case[2]))
        assert.equal(400, r.status, case[1] .. ": " .. r.body)
        assert.matches("application/json", r.headers["content-type"], 1, true)
        local err = decode(r.body).error
        assert.is_string(err, case[1])
        assert.is_true(#err > 0, case[1])
      end
      assert.are.same(before, get_list(c1, "/messages?since=0"))
      assert.are.same(before, get_list(c2, "/messages?since=0"))

      -- limits count characters: 2000 two-byte characters (4000 bytes) and a 64-character user pass
      assert.equal(2, post_ok(c2, "ann", e2000))
      assert.equal(3, post_ok(c1, u64, "hi"))
      -- the stream saw nothing between the good messages: no bad post was numbered or sent
      assert.is_true(helpers.run_clients({ sse }, all_have({ sse }, 3), 10), describe_clients({ sse }))
      assert.are.same({ 1, 2, 3 }, ids_of(sse.msgs))
      assert.equal(e2000, sse.msgs[2].text)
      assert.equal(u64, sse.msgs[3].user)
      assert.are.same({ 1, 2, 3 }, ids_of(get_list(c1, "/messages?since=0")))
    end)
  end)

  describe("delivery", function()
    it("gives 8 SSE clients and 8 long-pollers on both workers every one of 50 posts once, in order", function()
      local srv = start_chat(2)
      local clients, on_worker = {}, {}
      for i = 1, 16 do
        local id = i % 2 + 1
        local c = conn_on(srv, id)
        clients[i] = new_client(i <= 8 and "sse" or "poll", c)
        clients[i].want = 50
        on_worker[id] = (on_worker[id] or 0) + 1
      end
      assert.are.same({ 8, 8 }, on_worker)

      -- 5 posters on their own connections, each with one post in flight, all at once
      local posted, posters = {}, {}
      for p = 1, 5 do
        posters[p] = { conn = conn_on(srv, p % 2 + 1), queue = {}, ids = {} }
        for k = 1, 10 do
          posters[p].queue[k] = { user = "poster" .. p, text = string.format("p%d message %d ✓", p, k) }
        end
      end
      local function step_posters()
        local busy = false
        for _, p in ipairs(posters) do
          local c = p.conn
          if p.inflight then
            while c:fill(helpers.now()) do end
            if c.buf:find("\r\n\r\n", 1, true) then
              local r = assert(c:receive({ timeout = 10 }))
              assert.equal(201, r.status, r.body)
              local id = decode(r.body).id
              assert.is_nil(posted[id], "id " .. tostring(id) .. " given twice")
              posted[id] = p.inflight
              p.ids[#p.ids + 1] = id
              p.inflight = nil
            end
          end
          if not p.inflight and #p.queue > 0 then
            p.inflight = table.remove(p.queue, 1)
            assert(c:send(helpers.build_request("POST", "/messages",
              { { "Content-Type", "application/json" } }, cjson.encode(p.inflight))))
          end
          if p.inflight then busy = true end
        end
        return busy
      end
      local done = helpers.run_clients(clients, function() return not step_posters() end, 30)
      assert.is_true(done, "posts not all answered")
      local all = {}
      for _, p in ipairs(posters) do
        for k = 2, #p.ids do assert.is_true(p.ids[k] > p.ids[k - 1], "a poster's ids went backwards") end
        for _, id in ipairs(p.ids) do all[#all + 1] = id end
      end
      table.sort(all)
      assert.are.same(range(1, 50), all)

      assert.is_true(helpers.run_clients(clients, all_have(clients, 50), 30), describe_clients(clients))
      assert_all_got(clients, 50, posted)
      for _, cl in ipairs(clients) do assert.equal(1, cl.connects) end
    end)

    it("answers a long poll with nothing new by {messages: []} after CHAT_POLL_SECONDS", function()
      local srv = start_chat(2, { CHAT_POLL_SECONDS = 1 })
      local c = srv:connect()
      local t0 = helpers.now()
      assert(c:send(helpers.build_request("GET", "/poll?since=0")))
      assert.is_true(c:quiet(0.3), "answered at once")
      local r = assert(c:receive({ timeout = 15 }))
      assert.equal(200, r.status)
      assert.are.same({ messages = {} }, decode(r.body))
      assert.is_true(helpers.now() - t0 >= 0.95, "answered before CHAT_POLL_SECONDS")
      -- the connection stays usable, and since=N past the end waits too
      local c2 = srv:connect()
      assert.equal(1, post_ok(c2, "ann", "hi"))
      assert.are.same({ 1 }, ids_of(get_list(c, "/poll?since=0")))
      assert(c:send(helpers.build_request("GET", "/poll?since=1")))
      assert.is_true(c:quiet(0.3))
      r = assert(c:receive({ timeout = 15 }))
      assert.are.same({ messages = {} }, decode(r.body))
    end)

    it("answers a waiting long poll as soon as a message is posted, on the same or another worker", function()
      local srv = start_chat(2) -- CHAT_POLL_SECONDS stays 25: only the post can answer within 10 s
      local n = 0
      for _, pair in ipairs({ { 1, 2 }, { 2, 1 }, { 1, 1 } }) do
        local pc, qc = conn_on(srv, pair[1]), conn_on(srv, pair[2])
        assert(pc:send(helpers.build_request("GET", "/poll?since=" .. n)))
        assert.is_true(pc:quiet(0.3), "poll answered before anything was posted")
        n = n + 1
        assert.equal(n, post_ok(qc, "ann", "wake " .. n))
        local r = assert(pc:receive({ timeout = 10 }))
        assert.equal(200, r.status)
        local msgs = decode(r.body).messages
        assert.are.same({ n }, ids_of(msgs))
        assert.equal("wake " .. n, msgs[1].text)
      end
    end)

    it("sends ': ping' comments on quiet streams every CHAT_PING_SECONDS", function()
      local srv = start_chat(2, { CHAT_PING_SECONDS = 1 })
      local sse = new_client("sse", srv:connect())
      assert.is_true(helpers.run_clients({ sse }, function() return #sse.comments >= 2 end, 15),
        "no ping comments; got " .. #sse.comments)
      assert.equal(": ping", sse.comments[1])
      assert.equal(1, post_ok(srv:connect(), "ann", "after pings"))
      assert.is_true(helpers.run_clients({ sse }, all_have({ sse }, 1), 10))
      assert.are.same({ 1 }, ids_of(sse.msgs))
    end)
  end)

  describe("history", function()
    it("resumes SSE after Last-Event-ID or ?since=N, and /messages?since=N lists the same", function()
      local srv = start_chat(2)
      local c = srv:connect()
      for i = 1, 10 do assert.equal(i, post_ok(c, "ann", "m" .. i)) end
      for id = 1, 2 do
        local by_header = new_client("sse", conn_on(srv, id), 4)
        local by_query = new_client("sse", conn_on(srv, id), 0, "/events?since=4")
        local both = { by_header, by_query }
        assert.is_true(helpers.run_clients(both, all_have(both, 6), 10), describe_clients(both))
        assert.is_true(by_header.conn:quiet(0.2) and by_query.conn:quiet(0.2), "more than the missed messages")
        assert.are.same(range(5, 10), ids_of(by_header.msgs))
        assert.are.same(range(5, 10), ids_of(by_query.msgs))
        assert.are.same(range(5, 10), ids_of(get_list(conn_on(srv, id), "/messages?since=4")))
        assert.are.same({}, get_list(conn_on(srv, id), "/messages?since=" .. (9 + id)))
      end
      assert.are.same(range(1, 10), ids_of(get_list(c, "/messages?since=0")))
      assert.are.same(range(1, 10), ids_of(get_list(c, "/messages")))
    end)

    it("keeps the last 500 messages", function()
      local srv = start_chat(2)
      local conns = { conn_on(srv, 1), conn_on(srv, 2) }
      -- 255 pipelined posts on each connection
      local ids = {}
      for k, c in ipairs(conns) do
        local reqs = {}
        for i = 1, 255 do
          reqs[i] = helpers.build_request("POST", "/messages", { { "Content-Type", "application/json" } },
            cjson.encode({ user = "u" .. k, text = "n" .. i }))
        end
        assert(c:send(table.concat(reqs)))
      end
      for _, c in ipairs(conns) do
        for _ = 1, 255 do
          local r = assert(c:receive({ timeout = 20 }))
          assert.equal(201, r.status, r.body)
          ids[#ids + 1] = decode(r.body).id
        end
      end
      table.sort(ids)
      assert.are.same(range(1, 510), ids)
      for _, c in ipairs(conns) do
        local msgs = get_list(c, "/messages?since=0")
        assert.equal(500, #msgs)
        assert.are.same(range(11, 510), ids_of(msgs))
        assert.are.same(range(506, 510), ids_of(get_list(c, "/messages?since=505")))
        assert.are.same(range(11, 510), ids_of(get_list(c, "/poll?since=3")))
      end
      local sse = new_client("sse", srv:connect())
      assert.is_true(helpers.run_clients({ sse }, all_have({ sse }, 500), 10), describe_clients({ sse }))
      assert.are.same(range(11, 510), ids_of(sse.msgs))
    end)
  end)

  ---------------------------------------------------------------------------------------------------

  local function survives_kill(victim, label)
    it("keeps one gap-free order after SIGKILL of " .. label .. ", and reconnecting clients catch up", function()
      local srv = start_chat(3)
      local old_pid = tonumber(srv:wait_log("worker " .. victim .. " %(pid %d+%) ready")
        :match("%(pid (%d+)%)"))
      local clients = {}
      for i = 1, 9 do
        local id = (i - 1) % 3 + 1
        clients[i] = new_client(i <= 6 and "sse" or "poll", conn_on(srv, id))
        clients[i].worker = id
      end
      local posted = {}
      local function post_new(k)
        local c = srv:connect()
        local msg = { user = "u" .. k, text = "message " .. k }
        local id = post_ok(c, msg.user, msg.text)
        c:close()
        assert.is_nil(posted[id], "id " .. id .. " given twice")
        posted[id] = msg
        return id
      end
      for k = 1, 10 do assert.equal(k, post_new(k)) end
      assert.is_true(helpers.run_clients(clients, all_have(clients, 10), 20), describe_clients(clients))

      assert.is_true(helpers.kill(old_pid, "KILL"))
      -- post right away, through the respawn: until the replacement is ready (10 to 60 posts)
      local k, new_pid = 10, nil
      local pattern = "worker " .. victim .. " %(pid (%d+)%) ready"
      local function replacement()
        for _, line in ipairs(srv:log_lines(pattern)) do
          local p = tonumber(line:match(pattern))
          if p ~= old_pid then return p end
        end
      end
      while k < 70 and (k < 20 or not new_pid) do
        k = k + 1
        assert.equal(k, post_new(k), "ids must stay consecutive")
        for _, cl in ipairs(clients) do cl:step() end
        new_pid = replacement()
      end
      new_pid = helpers.wait_for(replacement)
      assert.truthy(new_pid, "no replacement worker; log:\n" .. srv:log_text())
      for _ = 1, 5 do
        k = k + 1
        assert.equal(k, post_new(k))
      end

      -- the victim's clients were cut off; they reconnect with their last id, some to the replacement
      local cut = 0
      assert.is_true(helpers.run_clients(clients, function()
        for _, cl in ipairs(clients) do
          if cl.worker == victim and not cl.closed then return false end
        end
        return true
      end, 10), "the killed worker's clients were not disconnected")
      for _, cl in ipairs(clients) do
        if cl.closed then
          cut = cut + 1
          cl:attach(conn_on(srv, cut % 2 == 1 and victim or (victim % 3 + 1)))
        end
      end
      assert.equal(3, cut)
      -- and one more client per worker starts from scratch
      for id = 1, 3 do clients[#clients + 1] = new_client("sse", conn_on(srv, id)) end
      for _ = 1, 5 do
        k = k + 1
        assert.equal(k, post_new(k))
      end
      for _, cl in ipairs(clients) do cl.want = k end
      assert.is_true(helpers.run_clients(clients, all_have(clients, k), 20),
        describe_clients(clients) .. "\nlog:\n" .. srv:log_text())
      assert_all_got(clients, k, posted)

      local rc = conn_on(srv, victim)
      assert.equal(new_pid, (helpers.worker_of(srv, rc)))
      local msgs = get_list(rc, "/messages?since=0")
      assert.are.same(range(1, k), ids_of(msgs))
      for _, m in ipairs(msgs) do assert.equal(posted[m.id].text, m.text) end
      assert.equal(0, srv:count_log("error"), srv:log_text())
    end)
  end

  describe("after a worker dies", function()
    survives_kill(2, "a worker that is not the leader")
    survives_kill(1, "the leader (worker 1, the oldest)")
  end)
end)
