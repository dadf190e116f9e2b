-- spec/control_spec.lua: the operator's controls: the control socket and the status / scale / stop
-- commands, SIGTTIN / SIGTTOU, --pid-file. Worker processes are counted as the master's live children
-- in /proc, and compared with what `moonfork status --json` and the log say.
local helpers = require "spec.helpers"

local decode = helpers.json_decode

local function ctl_path()
  return helpers.mktempdir() .. "/control.sock"
end

-- Starts reload_app.lua with --control; returns the server and the socket path.
local function start(workers, extra)
  local path = ctl_path()
  local args = { "--workers", tostring(workers or 2), "--control", path }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local srv = helpers.start("reload_app", args)
  srv:wait_log("control socket: " .. helpers.escape_pattern(path))
  return srv, path
end

-- `moonfork CMD... --control PATH`: status, stdout, stderr.
local function ctl(path, ...)
  return helpers.ctl(path, nil, ...)
end

local function status_json(path)
  local st, out, err = ctl(path, "status", "--json")
  assert.equal(0, st, err)
  local s = decode(out)
  assert.is_true(s.ok)
  return s
end

-- The worker entries of a status, by state
local function workers_in(s, state)
  local out = {}
  for _, w in ipairs(s.workers) do
    if not state or w.state == state then out[#out + 1] = w end
  end
  return out
end

local function wait_children(srv, n)
  local ok = helpers.wait_for(function()
    return #helpers.live_children(srv.pid) == n or srv:exited() ~= nil
  end, 20)
  assert(ok and not srv:exited(), string.format("expected %d live workers, have %d (master %s); log:\n%s", n,
    #helpers.live_children(srv.pid), srv:exited() and ("exited with status " .. srv:exited()) or "running",
    srv:log_text()))
  return helpers.live_children(srv.pid)
end

local function ids_seen(srv, want, tries)
  local seen = {}
  for _ = 1, tries or 300 do
    local r = assert(srv:get("/version"))
    assert.equal(200, r.status)
    seen[decode(r.body).id] = true
    if seen[want] then break end
  end
  return seen
end

describe("control", function()
  after_each(function() helpers.stop_all() end)

  describe("the control socket", function()
    it("is a socket of mode 0600 owned by the master's user, removed when the master exits", function()
      local srv, path = start(1)
      local p = io.popen("stat -c '%a %u %F' " .. helpers.shell_quote(path))
      local st = p:read("*l")
      p:close()
      assert.equal("600 0 socket", st)
      srv:signal("TERM")
      assert.equal(0, srv:exit_status(20))
      assert.is_nil(io.open(path, "r"))
    end)

    it("status against a missing socket fails with a clear message and exit status 1", function()
      local path = helpers.mktempdir() .. "/nothing-here.sock"
      local st, out, err = helpers.run({ "status", "--control", path })
      assert.equal(1, st)
      assert.equal("", out)
      assert.matches("^moonfork: cannot reach the master at " .. helpers.escape_pattern(path)
        .. ": No such file or directory", err)
      assert.matches("is it running%?", err)
      st, _, err = helpers.run({ "reload", "--control", path })
      assert.equal(1, st)
      assert.matches("cannot reach the master", err)
    end)

    it("a second master on the same path warns and leaves the first one's socket working", function()
      local srv, path = start(1)
      local srv2 = helpers.start("reload_app", { "--workers", "1", "--control", path })
      srv2:wait_log("warning: no control socket: another master answers on " .. helpers.escape_pattern(path))
      assert.equal(srv.pid, status_json(path).master.pid)
    end)

    it("is found from --port when no --control is given", function()
      local srv = helpers.start("reload_app", { "--workers", "1" })
      srv:wait_log("control socket: ")
      local st, out, err = helpers.run({ "status", "--json", "--port", tostring(srv.port) })
      assert.equal(0, st, err .. srv:log_text())
      assert.equal(srv.pid, decode(out).master.pid)
    end)
  end)

  describe("status", function()
    it("--json: the master's pid, uptime, url, restarts, and each worker as the log names it", function()
      local srv, path = start(2)
      for _ = 1, 6 do assert.equal(200, assert(srv:get("/")).status) end
      local s = status_json(path)
      assert.equal(srv.pid, s.master.pid)
      assert.equal("http://127.0.0.1:" .. srv.port, s.master.url)
      assert.equal(2, s.master.workers)
      assert.equal(0, s.master.restarts)
      assert.is_false(s.master.reloading)
      assert.is_number(s.master.uptime)
      assert.is_true(s.master.uptime >= 0)
      assert.equal(2, #s.workers)
      local pids = {}
      for i, w in ipairs(s.workers) do
        assert.equal(i, w.id)
        assert.equal("ready", w.state)
        assert.is_number(w.serial)
        assert.is_number(w.uptime)
        assert.is_number(w.requests)
        assert.is_number(w.connections)
        assert.is_true(w.rss_kb > 0, "rss_kb")
        pids[#pids + 1] = w.pid
      end
      assert.are.same(srv.workers, pids) -- the pids of the "listening on" line, in slot order
      assert.are.same(helpers.live_children(srv.pid), (function() table.sort(pids) return pids end)())
      -- the counters reach the status (workers report them twice a second)
      local total = helpers.wait_for(function()
        local n = 0
        for _, w in ipairs(status_json(path).workers) do n = n + w.requests end
        return n >= 6 and n
      end, 10)
      assert.equal(6, total)
      -- an open connection is counted
      local c = srv:connect()
      assert.equal(200, assert(c:request("GET", "/")).status)
      assert.truthy(helpers.wait_for(function()
        for _, w in ipairs(status_json(path).workers) do if w.connections >= 1 then return true end end
      end, 10), "no worker reports the open connection")
      c:close()

      -- a killed worker counts as a restart and its replacement is listed
      helpers.kill(srv.workers[1], "KILL")
      local line = srv:wait_log("worker 1 %(pid %d+%) ready", 2)
      local new = tonumber(line:match("%(pid (%d+)%)"))
      s = helpers.wait_for(function()
        local st = status_json(path)
        return st.workers[1].pid == new and st.workers[1].state == "ready" and st
      end, 10)
      assert.truthy(s, "the status never listed the respawned worker")
      assert.equal(1, s.master.restarts)
      assert.equal(srv.workers[2], s.workers[2].pid)
    end)

    it("prints a table: the master line and one row per worker", function()
      local srv, path = start(2)
      local st, out, err = ctl(path, "status")
      assert.equal(0, st, err)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equal(4, #lines, out)
      assert.matches("^master%s+pid " .. srv.pid .. ", up %d+ s, http://127%.0%.0%.1:" .. srv.port
        .. ", 2 workers, 0 restarts$", lines[1])
      assert.matches("^%s*id%s+pid%s+serial%s+state%s+uptime%s+requests%s+conns%s+rss$", lines[2])
      for i = 1, 2 do
        local id, pid, serial, state, up, req, conns, rss =
          lines[2 + i]:match("^%s*(%d+)%s+(%d+)%s+(%d+)%s+(%a+)%s+(%d+)s%s+(%d+)%s+(%d+)%s+([%d.]+)MB$")
        assert.truthy(id, "bad row: " .. lines[2 + i])
        assert.equal(i, tonumber(id))
        assert.equal(srv.workers[i], tonumber(pid))
        assert.equal("ready", state)
        assert.is_true(tonumber(rss) > 0)
        assert.truthy(serial and up and req and conns)
      end
    end)
  end)

  describe("scale", function()
    it("scale N adds workers and removes them, as the processes, the log and the status show", function()
      local srv, path = start(2)
      local st, out, err = ctl(path, "scale", "3")
      assert.equal(0, st, err)
      assert.equal("scale: 3 workers (was 2)\n", out)
      srv:wait_log("scaled from 2 to 3 workers")
      local w3 = tonumber(srv:wait_log("worker 3 %(pid %d+%) ready"):match("%(pid (%d+)%)"))
      local kids = wait_children(srv, 3)
      assert.are.same(helpers.set_of({ srv.workers[1], srv.workers[2], w3 }), helpers.set_of(kids))
      local s = status_json(path)
      assert.equal(3, s.master.workers)
      assert.equal(3, #workers_in(s, "ready"))
      assert.equal(w3, s.workers[3].pid)
      assert.truthy(ids_seen(srv, 3)[3], "no request reached worker 3")

      st, out, err = ctl(path, "scale", "1")
      assert.equal(0, st, err)
      assert.equal("scale: 1 workers (was 3)\n", out)
      srv:wait_log("retiring worker 3 %(pid " .. w3 .. "%): scaled down")
      srv:wait_log("retiring worker 2 %(pid " .. srv.workers[2] .. "%): scaled down")
      assert.are.same({ srv.workers[1] }, wait_children(srv, 1))
      s = status_json(path)
      assert.equal(1, s.master.workers)
      assert.equal(1, #s.workers)
      assert.equal(srv.workers[1], s.workers[1].pid)
      for _ = 1, 5 do assert.equal(200, assert(srv:get("/")).status) end
      assert.equal(0, srv:count_log("respawning")) -- the removed workers are not respawned

      -- and up again: slot 2 comes back
      st = ctl(path, "scale", "2")
      assert.equal(0, st)
      srv:wait_log("worker 2 %(pid %d+%) ready", 2)
      wait_children(srv, 2)
    end)

    it("rejects a bad count with exit status 2 and changes nothing", function()
      local srv, path = start(2)
      for _, bad in ipairs({ { "scale", "0" }, { "scale", "x" }, { "scale", "2000" }, { "scale" } }) do
        local st, out, err = ctl(path, (table.unpack or unpack)(bad))
        assert.equal(2, st, table.concat(bad, " "))
        assert.equal("", out)
        assert.matches("^moonfork: ", err)
      end
      assert.equal(0, srv:count_log("scaled from"))
      assert.equal(2, status_json(path).master.workers)
    end)
  end)

  describe("SIGTTIN and SIGTTOU", function()
    it("add and remove one worker each, never below one", function()
      local srv, path = start(2)
      srv:signal("TTIN")
      srv:wait_log("scaled from 2 to 3 workers")
      srv:wait_log("worker 3 %(pid %d+%) ready")
      wait_children(srv, 3)
      srv:signal("TTOU")
      srv:wait_log("scaled from 3 to 2 workers")
      wait_children(srv, 2)
      srv:signal("TTOU")
      srv:wait_log("scaled from 2 to 1 workers")
      assert.are.same({ srv.workers[1] }, wait_children(srv, 1))
      srv:signal("TTOU")
      srv:wait_log("SIGTTOU: already at one worker")
      assert.are.same({ srv.workers[1] }, helpers.live_children(srv.pid))
      assert.equal(1, status_json(path).master.workers)
      assert.equal(200, assert(srv:get("/")).status)
      srv:signal("TTIN")
      srv:wait_log("scaled from 1 to 2 workers")
      wait_children(srv, 2)
      assert.equal(2, #workers_in(status_json(path), "ready"))
    end)
  end)

  describe("stop", function()
    it("moonfork stop shuts the master down gracefully", function()
      local srv, path = start(2)
      local st, out, err = ctl(path, "stop")
      assert.equal(0, st, err)
      assert.equal("stop: stopping\n", out)
      assert.equal(0, srv:exit_status(20))
      srv:wait_log("shutting down %(stop command%)")
      srv:wait_log("all workers exited; bye")
      assert.is_true((helpers.wait_gone(srv.workers, 10)))
    end)
  end)

  describe("--pid-file", function()
    it("holds the master's pid while it runs and is removed when it exits", function()
      local file = helpers.mktempdir() .. "/moonfork.pid"
      local srv = helpers.start("reload_app", { "--workers", "1", "--pid-file", file })
      assert.equal(srv.pid .. "\n", helpers.read_file(file))
      srv:signal("TERM")
      assert.equal(0, srv:exit_status(20))
      assert.is_nil(helpers.read_file(file))
    end)
  end)
end)
