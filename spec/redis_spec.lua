-- spec/redis_spec.lua: moonfork.redis end to end: workers running spec/fixtures/redis_app.lua talk to a
-- real redis-server (spec/redis_server.lua: a free port and a Unix socket, stopped by pid).
local helpers = require "spec.helpers"
local redis_server = require "spec.redis_server"

local cmd = redis_server.cmd

-- the connections redis-server has, but the one asking
local function clients(r)
  local list = assert(cmd(r, "CLIENT", "LIST"))
  local n = 0
  for _ in list:gmatch("[^\n]+") do n = n + 1 end
  return n - 1
end

local function start(r, workers, liar_port)
  return helpers.start_env("redis_app", { "--workers", tostring(workers or 1) },
    { REDIS_PORT = r.port, REDIS_PATH = r.path, REDIS_PASSWORD = r.opts.password, LIAR_PORT = liar_port })
end

local get_json = helpers.get_json

-- requests sent on their own connections, answered later (Conn:receive)
local function send_all(srv, path, n)
  local conns = {}
  for i = 1, n do
    conns[i] = srv:connect()
    assert(conns[i]:send(helpers.build_request("GET", path)))
  end
  return conns
end

local function receive_json(conn)
  local resp = assert(conn:receive({ method = "GET" }))
  conn:close()
  return helpers.json_decode(resp.body)
end

describe("moonfork.redis", function()
  local r, srv

  after_each(function()
    helpers.stop_all()
    if r then redis_server.stop(r) end
    r = nil
  end)

  describe("commands", function()
    before_each(function()
      r = redis_server.start()
      srv = start(r)
    end)

    it("(over TCP to an address, to a name, and over a Unix socket) maps every reply type: status and bulk to strings, integers to numbers, nil to moonfork.null, arrays (nested, empty, with nils) to tables, errors to nil, 'ERR ...'", function()
      assert.are.same({
        set = { "OK" }, get = { "hello" }, binary = { "OK", 3 },
        missing = { helpers.json_decode("null") }, int = { 0, 41, 42 },
        big = { "OK", "1099511627776" }, array = { 0, 3, { "a", "b", "3" } },
        empty = { {} }, nested = { { 1, { "x", { "deep" } }, "FINE" } },
        nilarray = { { 1, helpers.json_decode("null"), 3 } },
        error = { false, "ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' " },
        wrongtype = { false, "ERR value is not an integer or out of range" },
        status = { "PONG" }, after = { "hello" }, unix = { "hello" }, named = { "hello" },
      }, get_json(srv, "/types"))
      assert.are.equal("a\0b", cmd(r, "GET", "b"))
    end)

    it("raises at the caller for a table argument, for MULTI outside a pipeline, and for a command at the script's top level", function()
      local got = get_json(srv, "/bad-args")
      assert.is_false(got[5])
      assert.matches("redis_app.lua:%d+: moonfork.redis: commands can only run in a request handler", got[6])
      assert.is_false(got[1])
      assert.matches("redis_app.lua:%d+: moonfork.redis: SET: argument #2 must be a string or a number, not a table", got[2])
      assert.is_false(got[3])
      assert.matches("MULTI is not allowed here: send MULTI ... EXEC in one redis:pipeline", got[4], 1, true)
    end)

    it("pipelines: every reply in its place, a Redis error as { false, err }, MULTI ... EXEC inside one", function()
      local null = helpers.json_decode("null")
      assert.are.same({
        replies = { "OK", 1, 2, "v1", null, { false, "ERR value is not an integer or out of range" }, {} },
        err = false, tx = { "OK", "QUEUED", "QUEUED", { 3, "OK" } }, empty = {},
      }, get_json(srv, "/pipeline"))
    end)

    it("gives a blocking command a connection of its own: plain commands go on meanwhile", function()
      local waiting = send_all(srv, "/blpop?key=q&seconds=0", 1)[1]
      assert.is_truthy(helpers.wait_for(function() return cmd(r, "CLIENT", "LIST"):find("cmd=blpop", 1, true) end, 10))
      assert.are.same({ "OK" }, get_json(srv, "/set?key=s&value=v"))
      assert.are.same({ "v" }, get_json(srv, "/get?key=s"))
      assert.are.equal(1, cmd(r, "RPUSH", "q", "x"))
      assert.are.same({ { "q", "x" } }, receive_json(waiting))
    end)

    it("lets a blocking command wait for its block time plus the client's timeout, not the timeout alone", function()
      local null = helpers.json_decode("null")
      assert.are.same({ { null }, { null } }, get_json(srv, "/fast-blocking"))
    end)

    it("drops the late reply of a command that timed out: the next command gets its own reply", function()
      cmd(r, "SET", "a", "A")
      cmd(r, "SET", "b", "B")
      assert.are.same({ "B" }, get_json(srv, "/fast-get?key=b")) -- connected
      helpers.kill(r.pid, "STOP")
      local ok, got = pcall(get_json, srv, "/fast-get?key=a")
      helpers.kill(r.pid, "CONT")
      assert(ok, got)
      assert.are.same({ false, "redis: timeout" }, got)
      assert.are.same({ "B" }, get_json(srv, "/fast-get?key=b"))
      assert.are.same({ "A" }, get_json(srv, "/fast-get?key=a"))
    end)

    it("gives up connecting after connectTimeout, to a server whose accept queue is full", function()
      local up = helpers.start_upstream("tcp_upstream")
      finally(function() helpers.stop_upstream(up) end)
      local full = up.full
      local got = get_json(srv, "/connect-timeout?port=" .. full)
      assert.are.same({ false, "redis: connect timeout (127.0.0.1:" .. full .. ")" }, got.first)
      assert.is_false(got.second[1])
      assert.matches("redis: not connected, reconnecting; last error: connect timeout", got.second[2], 1, true)
    end)

    it("fails at once when Redis refuses, and keeps failing at once while it waits to reconnect", function()
      local got = get_json(srv, "/refused")
      assert.are.same({ false, "redis: connection refused (127.0.0.1:1)" }, got.first)
      assert.is_false(got.second[1])
      assert.matches("redis: not connected, reconnecting; last error: connection refused", got.second[2], 1, true)
    end)
  end)

  describe("connections", function()
    it("1,000 concurrent INCRs from two workers, pipelined on one connection each, count exactly", function()
      r = redis_server.start()
      srv = start(r, 2)
      local c1, c2 = helpers.conn_on(srv, 1, "/get?key=none"), helpers.conn_on(srv, 2, "/get?key=none")
      assert(c1:send(helpers.build_request("GET", "/burst?n=500&key=hits")))
      assert(c2:send(helpers.build_request("GET", "/burst?n=500&key=hits")))
      local a, b = receive_json(c1), receive_json(c2)
      assert.are.same({ 500, {} }, { a.done, a.errors })
      assert.are.same({ 500, {} }, { b.done, b.errors })
      assert.are_not.equal(a.pid, b.pid)
      assert.are.equal("1000", cmd(r, "GET", "hits"))
      -- one subscription and one command connection per worker: 500 commands did not open 500
      assert.are.equal(4, clients(r))
    end)

    it("keeps a worker's memory bounded over 120,000 pipelined commands", function()
      r = redis_server.start()
      srv = start(r, 1)
      local maps = helpers.read_file("/proc/" .. srv.workers[1] .. "/maps") or ""
      if maps:find("libasan", 1, true) then
        pending("RSS says nothing under AddressSanitizer, whose quarantine keeps freed memory (its leak check runs at exit)")
        return
      end
      local function bursts(n)
        for _ = 1, n do
          local got = get_json(srv, "/burst?n=2000&key=mem")
          assert.are.same({}, got.errors)
          get_json(srv, "/pipeline")
        end
      end
      bursts(10)
      local before = helpers.rss_kib(srv.workers[1])
      bursts(50)
      local after = helpers.rss_kib(srv.workers[1])
      assert.is_true(after - before < 3072, ("RSS grew from %d to %d KiB"):format(before, after))
      assert.are.equal("120000", cmd(r, "GET", "mem"))
    end)

    it("connects lazily in workers and never from the master; an exiting worker closes its connections", function()
      r = redis_server.start()
      srv = start(r, 1)
      assert.is_true(helpers.wait_for(function() return cmd(r, "PUBLISH", "room", "x") == 1 end, 10))
      assert.are.equal(1, clients(r)) -- the worker's top-level subscription, nothing else yet
      get_json(srv, "/get?key=k")
      assert.are.equal(2, clients(r))
      srv:stop("TERM")
      assert.is_true(helpers.wait_for(function() return clients(r) == 0 end, 10))
    end)

    it("authenticates with username and password and selects the db from a redis:// URL; a wrong password says so", function()
      r = redis_server.start({ password = "s3cret" })
      srv = start(r, 1)
      local got = get_json(srv, "/auth")
      assert.are.same({ "OK" }, got.set)
      assert.are.equal("3", got.db)
      assert.is_false(got.bad[1])
      assert.matches("^redis: AUTH failed: WRONGPASS", got.bad[2])
      assert.is_false(got.anon[1])
      assert.matches("^NOAUTH", got.anon[2])
    end)
  end)

  describe("subscriptions", function()
    it("every worker's top-level subscription gets each message, with its channel", function()
      r = redis_server.start()
      srv = start(r, 2)
      assert.is_true(helpers.wait_for(function() return cmd(r, "PUBLISH", "other", "warmup") == 2 end, 10))
      assert.are.equal(2, cmd(r, "PUBLISH", "room", "hello"))
      for id = 1, 2 do
        local c = helpers.conn_on(srv, id, "/get?key=none")
        local seen = helpers.wait_for(function()
          local got = get_json(c, "/received")
          for _, m in ipairs(got.received) do
            if m == "room:hello" then return got.received end
          end
        end, 10)
        assert.is_truthy(seen, "worker " .. id .. " never got the message")
        c:close()
      end
    end)

    it("psubscribe from a handler waits for Redis; fn gets message, channel, pattern and may use Redis; sub:close() stops it", function()
      r = redis_server.start()
      srv = start(r, 1)
      assert.are.same({ true }, get_json(srv, "/psubscribe?pattern=news.*"))
      assert.are.equal(1, cmd(r, "PUBLISH", "news.a", "m1"))
      assert.is_true(helpers.wait_for(function() return cmd(r, "GET", "handled-m1") == "1" end, 10))
      assert.are.same({ { "m1", "news.a", "news.*" } }, get_json(srv, "/preceived"))
      get_json(srv, "/punsubscribe")
      assert.is_true(helpers.wait_for(function() return cmd(r, "PUBLISH", "news.a", "m2") == 0 end, 10))
    end)
  end)

  describe("a worker that drains", function()
    it("closes its subscriptions at once, while a request it still serves keeps using Redis", function()
      r = redis_server.start()
      srv = start(r, 1)
      local old = srv.workers[1]
      assert.is_true(helpers.wait_for(function() return cmd(r, "PUBSUB", "NUMSUB", "room")[2] == 1 end, 10))
      local held = send_all(srv, "/blpop?key=hold&seconds=0", 1)[1]
      assert.is_truthy(helpers.wait_for(function() return cmd(r, "CLIENT", "LIST"):find("cmd=blpop", 1, true) end, 10))
      srv:signal("HUP")
      srv:wait_log("retiring", 1)
      -- the new worker subscribes; the old one, still serving the BLPOP, has let its subscription go
      assert.is_true(helpers.wait_for(function()
        return srv:count_log("reload done") == 1 and cmd(r, "PUBSUB", "NUMSUB", "room")[2] == 1
      end, 10) or false, srv:log_text())
      assert.is_true(helpers.alive(old))
      assert.are.equal(1, cmd(r, "RPUSH", "hold", "x"))
      assert.are.same({ { "hold", "x" } }, receive_json(held))
    end)
  end)

  describe("a server that sends malformed replies", function()
    it("gets a clear protocol error and its connection dropped; the worker stays up and reconnects", function()
      r = redis_server.start()
      local port = helpers.free_port()
      local liar = helpers.bg_start({ "lua", helpers.FIXTURES .. "/redis_liar.lua", tostring(port) })
      finally(function() helpers.bg_stop(liar, "KILL") end)
      srv = start(r, 1, port)
      local ping = helpers.wait_for(function()
        local got = get_json(srv, "/liar?cmd=PING")
        return got[1] == "PONG" and got
      end, 10)
      assert.are.same({ "PONG" }, ping)
      local got = get_json(srv, "/liar?cmd=GARBAGE")
      assert.is_false(got[1])
      assert.matches('redis: Protocol error, got "?" as reply type byte (127.0.0.1:', got[2], 1, true)
      assert.is_truthy(helpers.wait_for(function() return get_json(srv, "/liar?cmd=PING")[1] == "PONG" end, 10))
      got = get_json(srv, "/liar?cmd=DEEP")
      assert.is_false(got[1])
      assert.matches("nested multi bulk replies with depth > 7", got[2], 1, true)
      assert.is_truthy(helpers.wait_for(function() return get_json(srv, "/liar?cmd=PING")[1] == "PONG" end, 10))
      assert.are.same({ srv.workers[1] }, { helpers.alive(srv.workers[1]) and srv.workers[1] })
    end)
  end)

  describe("when Redis goes away", function()
    it("commands in flight and after fail with an error, none hangs; after a restart commands work and subscriptions come back and say so", function()
      r = redis_server.start()
      srv = start(r, 1)
      assert.is_true(helpers.wait_for(function() return cmd(r, "PUBLISH", "room", "x") == 1 end, 10))
      assert.are.same({ "OK" }, get_json(srv, "/set?key=k&value=v1"))
      helpers.kill(r.pid, "STOP")
      local inflight = send_all(srv, "/get?key=k", 10)
      helpers.kill(r.pid, "KILL")
      for _, c in ipairs(inflight) do
        local got = receive_json(c)
        assert.is_false(got[1])
        assert.matches("^redis: ", got[2])
      end
      local down = get_json(srv, "/get?key=k")
      assert.is_false(down[1])
      assert.matches("^redis: ", down[2])
      redis_server.restart(r)
      assert.is_true(helpers.wait_for(function() return get_json(srv, "/set?key=k&value=v2")[1] == "OK" end, 20))
      assert.are.same({ "v2" }, get_json(srv, "/get?key=k"))
      assert.is_true(helpers.wait_for(function() return get_json(srv, "/received").reconnects == 1 end, 20))
      assert.are.equal(1, cmd(r, "PUBLISH", "room", "back"))
      assert.is_truthy(helpers.wait_for(function()
        local got = get_json(srv, "/received").received
        return got[#got] == "room:back"
      end, 10))
    end)
  end)
end)
