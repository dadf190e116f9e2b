-- spec/reuseport_spec.lua: --reuseport (server/reuseport.c): each worker slot has a listening socket of
-- its own; the master steers new connections to slots with a ready worker, keeps each slot's socket
-- across reloads and respawns, parks the sockets of slots a scale-down removed, and hands on the
-- connections that still reach a parked socket. Nothing may be dropped or left hanging on the way.
local helpers = require "spec.helpers"

local HELLO = helpers.ROOT .. "/examples/hello.lua"
local decode = helpers.json_decode

local function start(workers, env)
  local path = helpers.mktempdir() .. "/control.sock"
  local args = { "--workers", tostring(workers), "--control", path, "--reuseport" }
  local srv = env and helpers.start_env(HELLO, args, env) or helpers.start(HELLO, args)
  return srv, path
end

local function status(path)
  local st, out, err = helpers.ctl(path, 60, "status", "--json")
  assert.equal(0, st, err)
  return decode(out)
end

local function ctl_ok(srv, path, ...)
  local st, out, err = helpers.ctl(path, 120, ...)
  assert.equal(0, st, table.concat({ ... }, " ") .. ": " .. out .. err .. "\nlog:\n" .. srv:log_text())
end

-- Waits until exactly n workers run, all ready (retired ones gone).
local function settled(path, n)
  return helpers.wait_for(function()
    local s = status(path)
    if #s.workers ~= n then return nil end
    for _, w in ipairs(s.workers) do
      if w.state ~= "ready" then return nil end
    end
    return s
  end, 30)
end

-- The socket a worker listens on (its fd 3), as "socket:[inode]".
local function listen_socket(pid)
  local f = io.popen("readlink /proc/" .. pid .. "/fd/3 2>/dev/null")
  local link = f:read("*l")
  f:close()
  return link
end

-- n requests, each on a new connection; returns how many were answered 200 before the first that
-- was not (one stranded connection costs one timeout, not one each).
local function close_requests(srv, n)
  for i = 1, n do
    local c = srv:connect()
    local r = c:request("GET", "/", { { "Connection", "close" } }, nil, { timeout = 5 })
    c:close()
    if not (r and r.status == 200) then return i - 1 end
  end
  return n
end

-- wrk with Connection: close against srv until stopped; returns the handle.
local function load(srv)
  helpers.ensure_wrk()
  return helpers.bg_start({ "wrk", "-t1", "-c4", "--timeout", "5s", "-d", "120s", "-H", "Connection: close",
    "http://127.0.0.1:" .. srv.port .. "/" })
end

local function assert_no_failures(wrk)
  assert.is_nil(helpers.bg_exited(wrk), "wrk ended early")
  local out = helpers.bg_stop(wrk, "INT")
  local n = tonumber(out:match("(%d+) requests in"))
  assert.truthy(n and n > 0, "no requests made:\n" .. out)
  assert.is_nil(out:find("Socket errors", 1, true), out)
  assert.is_nil(out:find("Non-2xx", 1, true), out)
end

-- Waits until the workers have served `more` requests beyond what they had.
local function served_more(path, more)
  local function total()
    local n = 0
    for _, w in ipairs(status(path).workers) do n = n + w.requests end
    return n
  end
  local from = total()
  return helpers.wait_for(function() return total() >= from + more end, 30)
end

describe("--reuseport", function()
  after_each(function()
    helpers.bg_stop_all()
    helpers.stop_all()
  end)

  it("gives each worker a listening socket of its own, where the default is one shared socket", function()
    local srv = start(2)
    local a, b = listen_socket(srv.workers[1]), listen_socket(srv.workers[2])
    assert.truthy(a and a:match("^socket:"), tostring(a))
    assert.truthy(b and b:match("^socket:"), tostring(b))
    assert.are_not.equal(a, b)
    srv:stop()
    local shared = helpers.start(HELLO, { "--workers", "2" })
    assert.equal(listen_socket(shared.workers[1]), listen_socket(shared.workers[2]))
  end)

  it("is also switched on by listen({ reuseport = true }) in the script", function()
    local dir = helpers.mktempdir()
    local f = assert(io.open(dir .. "/app.lua", "w"))
    f:write('local moonfork = require "moonfork"\n',
      'moonfork.listen({ port = 0, nodes = 2, reuseport = true },\n',
      '  moonfork.http.createServer(function(req, res) res:finish("ok") end))\n')
    f:close()
    local srv = helpers.start(dir .. "/app.lua", {})
    assert.are_not.equal(listen_socket(srv.workers[1]), listen_socket(srv.workers[2]))
    assert.equal(1, close_requests(srv, 1))
  end)

  it("spreads new connections over the workers and reports its sockets in status", function()
    local srv, path = start(2)
    assert.equal(200, close_requests(srv, 200))
    local s = helpers.wait_for(function() -- the counts reach the status on the workers' next beat
      local st = status(path)
      local n = 0
      for _, w in ipairs(st.workers) do n = n + w.requests end
      return n >= 200 and st
    end, 30)
    assert.truthy(s, "the status never counted the 200 requests")
    assert.same({ sockets = 2, handed_off = 0 }, s.master.reuseport)
    for _, w in ipairs(s.workers) do
      assert.is_true(w.requests > 0, "worker " .. w.id .. " got no connection")
    end
  end)

  it("keeps each slot's socket through a reload under load, failing no request", function()
    local srv, path = start(2)
    local before = {}
    for _, w in ipairs(status(path).workers) do before[w.id] = listen_socket(w.pid) end
    local wrk = load(srv)
    for _ = 1, 3 do
      assert.truthy(served_more(path, 20), "no load reached the workers")
      ctl_ok(srv, path, "reload")
    end
    assert.truthy(served_more(path, 20), "no load reached the new workers")
    assert_no_failures(wrk)
    local s = settled(path, 2)
    for _, w in ipairs(s.workers) do
      assert.is_true(w.serial > 2, "worker " .. w.id .. " was not replaced")
      assert.equal(before[w.id], listen_socket(w.pid))
    end
  end)

  it("scales down and up under load without failing or stranding a connection", function()
    local srv, path = start(3)
    local wrk = load(srv)
    assert.truthy(served_more(path, 20))
    ctl_ok(srv, path, "scale", "1")
    assert.truthy(settled(path, 1), "the removed workers did not exit")
    assert.truthy(served_more(path, 20))
    ctl_ok(srv, path, "scale", "3")
    assert.truthy(settled(path, 3), "the new workers did not become ready")
    assert.truthy(served_more(path, 20))
    ctl_ok(srv, path, "scale", "1")
    assert.truthy(settled(path, 1))
    assert.truthy(served_more(path, 20))
    assert_no_failures(wrk)
    assert.equal(3, status(path).master.reuseport.sockets) -- parked, not closed
  end)

  it("sends no new connection to the parked socket of a removed worker", function()
    local srv, path = start(3)
    ctl_ok(srv, path, "scale", "1")
    local s = settled(path, 1)
    assert.truthy(s, "the removed workers did not exit")
    local handed = s.master.reuseport.handed_off
    assert.equal(150, close_requests(srv, 150))
    assert.equal(handed, status(path).master.reuseport.handed_off)
  end)

  it("hands connections that reach a parked socket to a ready worker", function()
    -- Without the steering program the kernel hashes connections over every socket, parked ones too.
    local srv, path = start(3, { MOONFORK_TEST_NO_STEER = "1" })
    ctl_ok(srv, path, "scale", "1")
    assert.truthy(settled(path, 1), "the removed workers did not exit")
    assert.equal(150, close_requests(srv, 150))
    assert.is_true(status(path).master.reuseport.handed_off > 0, "no connection reached a parked socket")
  end)

  it("serves what queued on a killed worker's socket once its replacement is up", function()
    local srv, path = start(2)
    local victim = status(path).workers[2]
    helpers.kill(victim.pid, "KILL")
    assert.equal(40, close_requests(srv, 40))
    local s = settled(path, 2)
    assert.truthy(s, "the killed worker was not replaced")
    assert.equal(1, s.master.restarts)
  end)
end)
