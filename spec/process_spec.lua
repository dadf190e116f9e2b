-- spec/process_spec.lua: the master and its workers as processes: count, load spreading, respawn with
-- backoff, graceful shutdown, death of the master, a second signal, no zombies.
local helpers = require "spec.helpers"

-- /id on a new connection: { id = worker number, pid = worker pid }
local function whoami(srv)
  local resp = assert(srv:request("GET", "/id", { { "Connection", "close" } }))
  assert.are.equal(200, resp.status)
  return helpers.json_decode(resp.body)
end

local function zombies_of(pid)
  local out = {}
  for _, c in ipairs(helpers.children(pid)) do
    if c.state == "Z" then out[#out + 1] = c.pid end
  end
  return out
end

describe("processes", function()
  after_each(function()
    helpers.stop_all()
  end)

  describe("workers", function()
    it("starts --workers 3 worker processes, children of the master, listed in the log", function()
      local srv = helpers.start("app", { "--workers", "3" })
      assert.are.equal(3, srv.nworkers)
      assert.are.equal(3, #srv.workers)
      local seen = {}
      for _, w in ipairs(srv.workers) do
        assert.is_nil(seen[w], "pid listed twice")
        seen[w] = true
        local state, ppid = helpers.proc_stat(w)
        assert.is_truthy(state, "worker " .. w .. " does not exist")
        assert.are_not.equal("Z", state)
        assert.are.equal(srv.pid, ppid)
      end
      -- the log's first line is the master's and names its pid
      local first = srv:log_lines()[1]
      assert.is_truthy(first:find("[master " .. srv.pid .. "] moonfork 0.1.0 starting: 3 workers", 1, true), first)
      for i = 1, 3 do
        srv:wait_log("%[master " .. srv.pid .. "%] worker " .. i .. " %(pid %d+%) ready")
      end
    end)

    it("serves requests with more than one worker", function()
      local srv = helpers.start("app", { "--workers", "2" })
      local ids, pids, n = {}, {}, 0
      for _ = 1, 400 do
        local who = whoami(srv)
        if not ids[who.id] then n = n + 1 end
        ids[who.id] = true
        pids[who.pid] = true
        if n >= 2 then break end
      end
      assert.are.equal(2, n, "only one worker answered 400 new connections")
      assert.is_true(ids[1] and ids[2])
      for _, w in ipairs(srv.workers) do assert.is_true(pids[w], "worker pid " .. w .. " never answered") end
    end)
  end)

  describe("a worker killed with SIGKILL", function()
    it("is logged, replaced by a new worker with another pid, and requests still succeed", function()
      local srv = helpers.start("app", { "--workers", "2" })
      local victim = srv.workers[1]
      assert.is_true(helpers.kill(victim, "KILL"))
      local line = srv:wait_log("worker %d+ %(pid " .. victim .. "%) killed by signal 9")
      assert.is_truthy(line:find("respawning in 100 ms", 1, true), line)
      -- two initial "ready" lines, then the replacement's
      local ready = srv:wait_log("worker %d+ %(pid %d+%) ready", 3)
      local newpid = tonumber(ready:match("%(pid (%d+)%)"))
      assert.are_not.equal(victim, newpid)
      assert.is_true(helpers.alive(newpid))
      assert.is_false(helpers.alive(victim))
      local _, ppid = helpers.proc_stat(newpid)
      assert.are.equal(srv.pid, ppid)
      for _ = 1, 20 do
        local resp = assert(srv:get("/"))
        assert.are.equal(200, resp.status)
        assert.are.equal("Hello, World!\n", resp.body)
      end
    end)

    it("leaves no zombie child of the master once it is replaced", function()
      local srv = helpers.start("app", { "--workers", "2" })
      local victim = srv.workers[2]
      assert.is_true(helpers.kill(victim, "KILL"))
      srv:wait_log("worker %d+ %(pid " .. victim .. "%) killed by signal 9")
      srv:wait_log("worker %d+ %(pid %d+%) ready", 3)
      assert.are.equal(200, assert(srv:get("/")).status)
      assert.are.same({}, zombies_of(srv.pid))
      assert.is_nil(helpers.proc_stat(victim), "the killed worker still has a /proc entry")
    end)
  end)

  describe("a script that crashes at load in the workers", function()
    it("is respawned with a doubling backoff: 100, 200, 400, 800 ms", function()
      local srv = helpers.start("crash_at_load", { "--workers", "1" }, { wait = false })
      srv:wait_log("respawning in 800 ms")
      local text = srv:log_text()
      local last = 0
      for _, ms in ipairs({ 100, 200, 400, 800 }) do
        local at = text:find("worker 1 %(pid %d+%) exited with status %d+; respawning in " .. ms .. " ms")
        assert.is_truthy(at, "no 'respawning in " .. ms .. " ms' line; log:\n" .. text)
        assert.is_true(at > last, "respawning in " .. ms .. " ms out of order; log:\n" .. text)
        last = at
      end
      assert.is_truthy(text:find("crash at load", 1, true), "the load error is not logged")
      assert.are.equal(0, srv:count_log("listening on"))
      assert.is_nil(srv:exited(), "the master gave up")
    end)
  end)

  describe("SIGTERM", function()
    it("lets an in-flight request finish, then the master exits 0 and no worker is left", function()
      local srv = helpers.start("app", { "--workers", "2" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/slow?ms=1500")))
      srv:wait_log("slow request started ms=1500")
      assert.is_true(srv:signal("TERM"))
      srv:wait_log("shutting down %(SIGTERM%)")
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      assert.are.equal("slept 1500", resp.body)
      assert.are.equal(0, srv:exit_status())
      srv:wait_log("all workers exited; bye")
      assert.is_true(helpers.wait_gone(srv.workers))
      assert.is_nil(helpers.connect(srv.port))
    end)

    it("answers a connection accepted before it whose request comes after, with Connection: close", function()
      local srv = helpers.start("app", { "--workers", "2" })
      local c = srv:connect()
      assert.truthy(helpers.wait_for(function() return helpers.worker_of(srv, c) end), "no worker accepted it")
      assert.is_true(srv:signal("TERM"))
      srv:wait_log("stopping %(", 2)
      local resp = assert(c:request("GET", "/"))
      assert.are.equal(200, resp.status)
      assert.are.equal("close", resp.headers["connection"])
      c:close()
      assert.are.equal(0, srv:exit_status())
    end)

    it("exits 0 at once when nothing is in flight", function()
      local srv = helpers.start("app", { "--workers", "2" })
      assert.are.equal(200, assert(srv:get("/")).status)
      assert.is_true(srv:signal("TERM"))
      assert.are.equal(0, srv:exit_status())
      assert.is_true(helpers.wait_gone(srv.workers))
    end)
  end)

  describe("a second SIGINT during shutdown", function()
    it("makes the master exit without waiting for --grace, and the workers are gone", function()
      local srv = helpers.start("app", { "--workers", "2", "--grace", "300", "--request-timeout", "300" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/never")))
      srv:wait_log("never request started")
      assert.is_true(srv:signal("INT"))
      srv:wait_log("shutting down %(SIGINT%)")
      assert.is_true(srv:signal("INT"))
      local status = srv:exit_status(60)
      assert.is_truthy(status, "the master still runs 60 s after the second SIGINT (--grace is 300)")
      assert.are_not.equal(0, status)
      assert.is_true(helpers.wait_gone(srv.workers))
    end)
  end)

  describe("SIGKILL of the master", function()
    it("leaves no worker behind and the port stops accepting", function()
      local srv = helpers.start("app", { "--workers", "2" })
      assert.are.equal(200, assert(srv:get("/")).status)
      assert.is_true(srv:signal("KILL"))
      assert.are.equal(128 + 9, srv:exit_status())
      local gone, left = helpers.wait_gone(srv.workers)
      assert.is_true(gone, "workers still alive: " .. table.concat(left or {}, ", "))
      assert.is_truthy(helpers.wait_for(function() return helpers.connect(srv.port) == nil end),
        "the port still accepts connections")
    end)
  end)
end)
