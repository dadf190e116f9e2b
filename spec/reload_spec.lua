-- spec/reload_spec.lua: rolling reloads (SIGHUP, `moonfork reload`, --watch): new code goes live, one
-- worker at a time, without failing a request: under wrk load with and without keep-alive, with
-- requests, long polls and idle keep-alive connections in flight, and with the chat's SSE clients
-- (no message lost). A script that fails to load aborts the reload and the old code keeps serving.
--
-- The app is spec/fixtures/reload_app.lua; a spec that changes code edits a copy in a temp dir.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local decode = helpers.json_decode
local CHAT = helpers.ROOT .. "/examples/chat/server.lua"

local sh, bg_start, bg_exited, bg_stop = helpers.sh, helpers.bg_start, helpers.bg_exited, helpers.bg_stop

local function stop_everything()
  helpers.bg_stop_all()
  helpers.stop_all()
end

---------------------------------------------------------------------------------------------------
-- servers, control commands

local function ctl_path()
  return helpers.mktempdir() .. "/control.sock"
end

-- Starts `script` (a fixture name or a path) with --control; returns the server and the socket path.
local function start(script, workers, extra)
  local path = ctl_path()
  local args = { "--workers", tostring(workers or 2), "--control", path }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local srv = helpers.start(script, args)
  return srv, path
end

local function ctl(path, ...)
  return helpers.ctl(path, 120, ...)
end

local function reload_ok(srv, path)
  local st, out, err = ctl(path, "reload")
  assert.equal(0, st, "moonfork reload: " .. err .. "\nlog:\n" .. srv:log_text())
  assert.equal("reload: done\n", out)
end

local function status_json(path)
  local st, out, err = ctl(path, "status", "--json")
  assert.equal(0, st, err)
  return decode(out)
end

local function ready_pids(path) return helpers.ready_pids(status_json(path)) end

-- Waits until each of the pids logged that it is retiring: from then on it accepts nothing, so
-- every new connection reaches a new worker.
local function wait_retired(srv, pids)
  for _, p in ipairs(pids) do srv:wait_log("%[worker %d+ " .. p .. "%] retiring") end
end

local function version(srv)
  local r = assert(srv:get("/version"))
  assert.equal(200, r.status, r.body)
  return decode(r.body)
end

-- Index of the first log line matching pattern (nil if none).
local function log_index(srv, pattern)
  for i, l in ipairs(srv:log_lines()) do
    if l:find(pattern) then return i end
  end
end

local function count_lines(path)
  local n = 0
  for _ in (helpers.read_file(path) or ""):gmatch("\n") do n = n + 1 end
  return n
end

---------------------------------------------------------------------------------------------------

describe("reload", function()
  after_each(stop_everything)

  describe("new code", function()
    it("goes live on `moonfork reload`, one worker at a time, each pid replaced, drain and exit hooks run", function()
      local script = helpers.fixture_copy("reload_app")
      local srv, path = start(script, 2)
      local old = srv.workers
      assert.equal("v1", version(srv).version)

      helpers.edit_file(script, 'local VERSION = "v1"', 'local VERSION = "v2"')
      reload_ok(srv, path)
      srv:wait_log("reloading %(control socket%)")
      srv:wait_log("reload done: 2 workers replaced")
      local new = ready_pids(path)
      assert.equal(2, #new)
      for _, p in ipairs(new) do assert.is_nil(helpers.set_of(old)[p], "worker " .. p .. " was not replaced") end
      assert.is_true((helpers.wait_gone(old, 20)))
      assert.are.same(new, helpers.live_children(srv.pid))
      wait_retired(srv, old)
      for _ = 1, 20 do
        local v = version(srv)
        assert.equal("v2", v.version)
        assert.truthy(helpers.set_of(new)[v.pid])
      end

      -- one slot at a time: slot 1's new worker is ready before its old one retires, and that before
      -- slot 2's new worker starts being waited for
      local lines = srv:log_lines()
      local ready = {}
      for i, l in ipairs(lines) do
        local id, pid = l:match("%] worker (%d) %(pid (%d+)%) ready")
        if pid and helpers.set_of(new)[tonumber(pid)] then ready[tonumber(id)] = i end
      end
      local ret1 = log_index(srv, "retiring worker 1 %(pid " .. old[1] .. "%): reload")
      local ret2 = log_index(srv, "retiring worker 2 %(pid " .. old[2] .. "%): reload")
      assert.truthy(ready[1] and ready[2] and ret1 and ret2, srv:log_text())
      assert.is_true(ready[1] < ret1 and ret1 < ready[2] and ready[2] < ret2, srv:log_text())

      -- the old workers ran their drain hook, then their exit hook; the new ones neither
      for _, p in ipairs(old) do
        local d = log_index(srv, "^drain hook in " .. p .. " v1$")
        local e = log_index(srv, "^exit hook in " .. p .. " v1$")
        assert.truthy(d, "no drain hook in " .. p .. ":\n" .. srv:log_text())
        assert.truthy(e, "no exit hook in " .. p .. ":\n" .. srv:log_text())
        assert.is_true(d < e)
      end
      for _, p in ipairs(new) do
        assert.is_nil(log_index(srv, "hook in " .. p .. " "))
      end

      -- SIGHUP does the same
      helpers.edit_file(script, 'local VERSION = "v2"', 'local VERSION = "v3"')
      srv:signal("HUP")
      srv:wait_log("reloading %(SIGHUP%)")
      srv:wait_log("reload done: 2 workers replaced", 2)
      local newer = ready_pids(path)
      for _, p in ipairs(newer) do assert.is_nil(helpers.set_of(new)[p]) end
      wait_retired(srv, new)
      for _ = 1, 10 do assert.equal("v3", version(srv).version) end
      assert.is_true((helpers.wait_gone(new, 20)))
      assert.are.same(newer, helpers.live_children(srv.pid))
      assert.equal(0, srv:count_log("respawning"))
    end)

    it("answers two `moonfork reload` run at once, both with success", function()
      local srv, path = start("reload_app", 2)
      local a = helpers.spawn({ "reload", "--control", path })
      local b = helpers.spawn({ "reload", "--control", path })
      assert.equal(0, a:exit_status(60), a:log_text())
      assert.equal(0, b:exit_status(60), b:log_text())
      assert.equal("reload: done\n", a:stdout_text())
      assert.equal("reload: done\n", b:stdout_text())
      a:kill_all()
      b:kill_all()
      srv:wait_log("reload done")
      assert.equal(200, assert(srv:get("/")).status)
    end)
  end)

  describe("a script that fails to load", function()
    it("aborts the reload: `moonfork reload` exits 1 with file:line, the old workers keep serving", function()
      local script = helpers.fixture_copy("reload_app")
      local original = helpers.read_file(script)
      local srv, path = start(script, 2)
      local old = { srv.workers[1], srv.workers[2] }
      table.sort(old)
      local nlines = count_lines(script)
      local esc = helpers.escape_pattern(script)
      local cases = {
        { "a syntax error", original .. "x = (",
          "^moonfork: reload failed: " .. esc .. ":" .. (nlines + 1) .. ": .*'<eof>'" },
        { "an error at load, before listen()",
          original:gsub("moonfork%.listen%(", 'error("broken before listen") moonfork.listen('),
          "^moonfork: reload failed: .*" .. esc .. ":%d+: broken before listen" },
        { "listen() never called", (original:gsub("moonfork%.listen%(", "print(")),
          "^moonfork: reload failed: " .. esc .. ": the script never called moonfork%.listen%(%)" },
        -- the master's probe stops at listen(): only the new worker meets this one
        { "an error in the worker only, after listen()", original .. 'error("crash in the worker only")\n',
          "^moonfork: reload failed: the new worker 1 failed to start: .*" .. esc .. ":" .. (nlines + 1)
          .. ": crash in the worker only" },
      }
      for i, case in ipairs(cases) do
        helpers.write_file(script, case[2])
        local st, out, err = ctl(path, "reload")
        assert.equal(1, st, case[1] .. ": " .. out .. err)
        assert.equal("", out)
        assert.matches(case[3], err)
        srv:wait_log("reload failed: ", i)
        -- nothing changed: same workers, old code
        assert.are.same(old, ready_pids(path))
        assert.is_false(status_json(path).master.reloading)
        for _ = 1, 6 do
          local v = version(srv)
          assert.equal("v1", v.version)
          assert.truthy(helpers.set_of(old)[v.pid])
        end
      end
      srv:wait_log("worker 1 %(pid %d+%) exited with status 1 before it was ready")
      assert.are.same(old, helpers.live_children(srv.pid)) -- the failed new worker is gone
      assert.equal(0, srv:count_log("retiring"))
      assert.equal(0, status_json(path).master.restarts)

      -- fixed: the next reload goes through
      helpers.write_file(script, (original:gsub('local VERSION = "v1"', 'local VERSION = "v2"')))
      reload_ok(srv, path)
      wait_retired(srv, old)
      assert.equal("v2", version(srv).version)
    end)
  end)

  describe("what is in flight", function()
    it("finishes requests, answers long polls at once via on('drain'), closes kept-alive connections after their next request", function()
      local script = helpers.fixture_copy("reload_app")
      local srv, path = start(script, 1, { "--grace", "30" })
      local oldpid = srv.workers[1]
      local poll = srv:connect()
      assert(poll:send(helpers.build_request("GET", "/poll")))
      srv:wait_log("poll waiting in " .. oldpid)
      local idle = srv:connect()
      local r = assert(idle:request("GET", "/"))
      assert.equal("hello v1\n", r.body)
      assert.is_nil(r.headers.connection)
      local busy = srv:connect()
      assert(busy:send(helpers.build_request("GET", "/slow?ms=300")))

      helpers.edit_file(script, 'local VERSION = "v1"', 'local VERSION = "v2"')
      reload_ok(srv, path)
      -- the long poll: answered by the drain hook, well before --grace (30 s) could end it
      local pr = assert(poll:receive({ timeout = 10 }))
      assert.equal(200, pr.status)
      assert.equal("drained " .. oldpid, pr.body)
      -- the request in flight finishes, with the old code
      r = assert(busy:receive({ timeout = 10 }))
      assert.equal(200, r.status)
      assert.equal("slow v1", r.body)
      assert.equal("close", r.headers.connection)
      assert.is_true(busy:closed_by_peer(10))
      busy:close()
      -- the idle keep-alive connection was not cut: its next request is answered, then it closes
      r = assert(idle:request("GET", "/"))
      assert.equal(200, r.status)
      assert.equal("close", r.headers.connection)
      assert.is_true(idle:closed_by_peer(10))
      idle:close()
      -- the poll's response said so too: its client must reconnect, not poll the retired worker again
      assert.equal("close", pr.headers.connection)
      assert.is_true(poll:closed_by_peer(10))
      poll:close()
      srv:wait_log("%[worker 1 " .. oldpid .. "%] drained; exiting")
      assert.is_true((helpers.wait_gone({ oldpid }, 10)))
      assert.equal(0, srv:count_log("grace period over"))
      assert.equal("v2", version(srv).version)
    end)

    it("closes an idle keep-alive connection of a retired worker at --keepalive-timeout", function()
      local srv, path = start("reload_app", 1, { "--grace", "30", "--keepalive-timeout", "1" })
      local oldpid = srv.workers[1]
      local idle = srv:connect()
      assert.equal(200, assert(idle:request("GET", "/")).status)
      reload_ok(srv, path)
      assert.is_true(idle:closed_by_peer(10))
      idle:close()
      srv:wait_log("%[worker 1 " .. oldpid .. "%] drained; exiting")
      assert.equal(0, srv:count_log("grace period over"))
    end)
  end)

  describe("under load", function()
    -- wrk runs until ten reloads are done (each waits until the workers it replaces took load),
    -- then gets SIGINT and prints its totals.
    local function ten_reloads_under(wrk_args)
      helpers.ensure_wrk()
      local srv, path = start("reload_app", 2)
      local argv = { "wrk", "-t1", "--timeout", "5s", "-d", "120s" }
      for _, a in ipairs(wrk_args) do argv[#argv + 1] = a end
      argv[#argv + 1] = "http://127.0.0.1:" .. srv.port .. "/"
      local wrk = bg_start(argv)
      for i = 1, 10 do
        local served = helpers.wait_for(function()
          local n = 0
          for _, w in ipairs(status_json(path).workers) do
            if w.state == "ready" then n = n + w.requests end
          end
          return n >= 20
        end, 20)
        assert.truthy(served, "reload " .. i .. ": the workers got no load; wrk says:\n"
          .. (helpers.read_file(wrk.out) or ""))
        reload_ok(srv, path)
      end
      assert.equal(10, srv:count_log("reload done: 2 workers replaced"))
      assert.is_nil(bg_exited(wrk), "wrk ended before the reloads did")
      local out = bg_stop(wrk, "INT")
      local n = tonumber(out:match("(%d+) requests in"))
      assert.truthy(n, "no totals from wrk:\n" .. out)
      assert.is_true(n > 0, out)
      assert.is_nil(out:find("Socket errors", 1, true), out)
      assert.is_nil(out:find("Non-2xx", 1, true), out)
      assert.equal(0, srv:count_log("error"))
      assert.equal(0, srv:count_log("respawning"))
      return n
    end

    it("fails no request with keep-alive through ten reloads in a row", function()
      ten_reloads_under({ "-c", "8" })
    end)

    it("fails no request with Connection: close through ten reloads in a row", function()
      ten_reloads_under({ "-c", "4", "-H", "Connection: close" })
    end)
  end)

  describe("--watch", function()
    it("reloads when a .lua file beside or below the script changes; a broken save keeps the old code", function()
      local script, dir = helpers.fixture_copy("reload_app")
      assert(sh("mkdir " .. helpers.shell_quote(dir .. "/lib")))
      helpers.write_file(dir .. "/lib/util.lua", "return {}\n")
      local srv = start(script, 1, { "--watch" })
      srv:wait_log("%-%-watch: watching 2 directories under " .. helpers.escape_pattern(dir))
      assert.equal("v1", version(srv).version)

      local w1 = srv.workers[1]
      helpers.edit_file(script, 'local VERSION = "v1"', 'local VERSION = "v2"')
      srv:wait_log("reloading %(%-%-watch: a %.lua file changed%)")
      srv:wait_log("reload done: 1 workers replaced")
      wait_retired(srv, { w1 })
      assert.equal("v2", version(srv).version)

      -- a file in a subdirectory
      local w2 = tonumber(srv:wait_log("worker 1 %(pid %d+%) ready", 2):match("%(pid (%d+)%)"))
      helpers.write_file(dir .. "/lib/util.lua", "return { changed = true }\n")
      srv:wait_log("reload done: 1 workers replaced", 2)
      wait_retired(srv, { w2 })

      -- a broken save: logged with file:line, the old code keeps serving; the fix goes live
      helpers.write_file(script, helpers.read_file(script) .. "x = (\n")
      srv:wait_log("reload failed: " .. helpers.escape_pattern(script) .. ":%d+:")
      assert.equal("v2", version(srv).version)
      local w3 = tonumber(srv:wait_log("worker 1 %(pid %d+%) ready", 3):match("%(pid (%d+)%)"))
      local fixed = helpers.read_file(script):gsub("x = %(\n$", ""):gsub('"v2"', '"v3"')
      helpers.write_file(script, fixed)
      srv:wait_log("reload done: 1 workers replaced", 3)
      wait_retired(srv, { w3 })
      assert.equal("v3", version(srv).version)
    end)
  end)

  ---------------------------------------------------------------------------------------------------
  -- the chat through a reload

  describe("the chat", function()
    local function start_chat()
      local path = ctl_path()
      local srv = helpers.start_env(CHAT, { "--workers", "2", "--grace", "30", "--control", path }, {})
      return srv, path
    end

    -- A keep-alive connection held by worker `id`.
    local function conn_on(srv, id)
      return helpers.conn_on(srv, id, "/style.css", "HEAD")
    end

    local function post(srv, text)
      local r, err = srv:request("POST", "/messages", { { "Content-Type", "application/json" } },
        cjson.encode({ user = "ann", text = text }))
      assert(r, "POST /messages: " .. tostring(err))
      assert.equal(201, r.status, r.body)
      return decode(r.body).id
    end

    it("answers long polls at once when their worker is retired, and the next poll gets new messages", function()
      local srv, path = start_chat()
      local olds = srv.workers
      local polls = { conn_on(srv, 1), conn_on(srv, 2) }
      for _, c in ipairs(polls) do assert(c:send(helpers.build_request("GET", "/poll?since=0"))) end
      for _, c in ipairs(polls) do assert.is_true(c:quiet(0.2), "poll answered before the reload") end
      reload_ok(srv, path)
      for _, c in ipairs(polls) do
        local r = assert(c:receive({ timeout = 10 })) -- CHAT_POLL_SECONDS is 25, --grace 30
        assert.equal(200, r.status)
        assert.are.same({}, decode(r.body).messages)
        assert.equal("close", r.headers.connection)
      end
      for _, p in ipairs(olds) do srv:wait_log("%[worker %d " .. p .. "%] drained; exiting") end
      assert.equal(0, srv:count_log("grace period over"))
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/poll?since=0")))
      assert.equal(1, post(srv, "after the reload"))
      local r = assert(c:receive({ timeout = 10 }))
      assert.equal(200, r.status)
      assert.equal("after the reload", decode(r.body).messages[1].text)
    end)

    -- An SSE client that reconnects with Last-Event-ID whenever its stream ends.
    local Sse = {}
    Sse.__index = Sse

    -- reuse: ask again on the same connection when the server kept it alive (as browsers do)
    local function sse_client(srv, conn, reuse)
      local cl = setmetatable({ srv = srv, ids = {}, last = 0, connects = 0, reuse = reuse }, Sse)
      cl:open(conn)
      return cl
    end

    function Sse:open(conn)
      self.conn = conn or self.srv:connect()
      self.reader, self.checked = helpers.sse_reader(self.conn), false
      self.connects = self.connects + 1
      local h = { { "Accept", "text/event-stream" } }
      if self.last > 0 then h[#h + 1] = { "Last-Event-ID", tostring(self.last) } end
      assert(self.conn:send(helpers.build_request("GET", "/events", h)))
    end

    function Sse:step()
      local c = self.conn
      while c:fill(helpers.now()) do end
      local events = self.reader:read()
      local head = self.reader.head
      if head and not self.checked then
        assert.matches("^HTTP/1%.1 200", head)
        assert.truthy(head:lower():find("transfer%-encoding: chunked"), head)
        self.checked = true
      end
      for _, ev in ipairs(events) do
        if ev.data then
          local m = decode(ev.data)
          assert.equal(ev.id, m.id)
          self.ids[#self.ids + 1] = m.id
          self.last = m.id
        end
      end
      local ended = self.reader.ended
      if c.eof or (ended and not self.reuse) then
        c:close()
        self:open()
      elseif ended then
        self:open(c)
      end
    end

    local function all_have(clients, n)
      return function()
        for _, cl in ipairs(clients) do if #cl.ids < n then return false end end
        return true
      end
    end

    local function describe_clients(clients)
      local out = {}
      for i, cl in ipairs(clients) do
        out[i] = string.format("client %d: %d connects, ids %s", i, cl.connects, table.concat(cl.ids, ","))
      end
      return table.concat(out, "\n")
    end

    -- Posts go on (one per 50 ms, at most 150: the chat keeps 500) while the workers are replaced.
    local function sse_through_reload(reuse)
      local srv = start_chat()
      local olds = srv.workers
      local clients = {}
      for i = 1, 4 do clients[i] = sse_client(srv, conn_on(srv, i % 2 + 1), reuse) end
      local n = 0
      for _ = 1, 5 do
        n = n + 1
        assert.equal(n, post(srv, "before " .. n))
      end
      assert.is_true(helpers.run_clients(clients, all_have(clients, n), 20), describe_clients(clients))

      srv:signal("HUP")
      -- --grace is 30 s: a retired worker still there after 20 s is held by a client
      local deadline = helpers.now() + 20
      while srv:count_log("reload done") < 1 or srv:count_log("drained; exiting") < 2 do
        assert(helpers.now() < deadline, "the retired workers did not exit within 20 s;\n"
          .. describe_clients(clients) .. "\nlog:\n" .. srv:log_text())
        if n < 150 then
          n = n + 1
          assert.equal(n, post(srv, "during " .. n))
        end
        helpers.run_clients(clients, function() return false end, 0.05)
      end
      for _ = 1, 5 do
        n = n + 1
        assert.equal(n, post(srv, "after " .. n))
      end
      assert.is_true(helpers.run_clients(clients, all_have(clients, n), 20), describe_clients(clients))
      local want = {}
      for i = 1, n do want[i] = i end
      for i, cl in ipairs(clients) do
        assert.are.same(want, cl.ids, "client " .. i)
        assert.is_true(cl.connects >= 2, "client " .. i .. " was never moved off its retired worker")
      end
      assert.is_true((helpers.wait_gone(olds, 20)))
    end

    it("loses no message for SSE clients that reconnect with Last-Event-ID through a reload", function()
      sse_through_reload(false)
    end)

    it("loses no message for SSE clients that ask again on their kept-alive connection, as browsers do", function()
      sse_through_reload(true)
    end)
  end)
end)
