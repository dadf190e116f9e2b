-- spec/sched_slice_spec.lua: --sched-slice, the CPU time slice each worker asks the kernel for
-- (server/cpuslice.c), read back from /proc/PID/sched, where the kernel shows it as se.slice in ns.
-- Per-task slices came with Linux 6.12; on an older kernel the master says so in its log, and these
-- specs are reported pending, never passed.
local helpers = require "spec.helpers"

local UNSUPPORTED = "no per%-task CPU time slices here"

local function slice_ns(pid)
  local s = helpers.read_file("/proc/" .. tostring(pid) .. "/sched")
  return s and tonumber(s:match("se%.slice%s*:%s*(%d+)"))
end

local function write_app(path, slice)
  local f = assert(io.open(path, "w"))
  f:write('local moonfork = require "moonfork"\n',
    'moonfork.listen({ port = 0, nodes = 2, schedSlice = ', slice, ' },\n',
    '  moonfork.http.createServer(function(req, res) res:finish("ok") end))\n')
  f:close()
end

-- starts moonfork; nil (and the spec pending) when the kernel cannot do per-task slices
local function start(script, args)
  local srv = helpers.start(script, args)
  if srv:count_log(UNSUPPORTED) > 0 then
    pending("no per-task time slices on this machine: " .. srv:log_lines(UNSUPPORTED)[1])
    return nil
  end
  return srv
end

local function assert_slices(srv, ns)
  for i, pid in ipairs(srv.workers) do
    assert.are.equal(ns, slice_ns(pid), "worker " .. i .. " (pid " .. pid .. ")\nlog:\n" .. srv:log_text())
  end
end

describe("--sched-slice", function()
  -- the kernel's own slice, as this process (which never asked for one) has it
  local kernel_default = slice_ns("self")

  after_each(function() helpers.stop_all() end)

  it("runs every worker with a 0.3 ms time slice by default, and leaves the master with the kernel's", function()
    local srv = start("app", { "--workers", "2" })
    if not srv then return end
    assert.are.equal(2, #srv.workers)
    assert_slices(srv, 300000)
    assert.are.equal(kernel_default, slice_ns(srv.pid))
  end)

  it("gives the workers the slice it names, respawned workers too", function()
    local srv = start("app", { "--workers", "2", "--sched-slice", "2" })
    if not srv then return end
    assert_slices(srv, 2000000)
    local old = srv.workers[1]
    helpers.kill(old, "KILL")
    local line = srv:wait_log("worker 1 %(pid %d+%) ready", 2)
    local new = tonumber(line:match("%(pid (%d+)%)"))
    assert.are_not.equal(old, new)
    assert.are.equal(2000000, slice_ns(new))
  end)

  it("leaves the workers with the kernel's slice when it is 0", function()
    local srv = start("app", { "--workers", "2", "--sched-slice", "0" })
    if not srv then return end
    assert_slices(srv, kernel_default)
  end)

  it("is set by listen({ schedSlice = MS }), and a reload applies the script's new value", function()
    local dir = helpers.mktempdir()
    write_app(dir .. "/app.lua", "1.5")
    local srv = start(dir .. "/app.lua", {})
    if not srv then return end
    assert_slices(srv, 1500000)
    write_app(dir .. "/app.lua", "4")
    srv:signal("HUP")
    srv:wait_log("reload done: 2 workers replaced")
    local pids = {}
    for _, l in ipairs(srv:log_lines("worker %d %(pid %d+%) ready")) do pids[#pids + 1] = tonumber(l:match("%(pid (%d+)%)")) end
    assert.are.equal(4, #pids, srv:log_text())
    for i = 3, 4 do assert.are.equal(4000000, slice_ns(pids[i]), "new worker pid " .. pids[i]) end
  end)
end)

-- The worker keeps its slice itself (the kernel checks it only at its tick): after running longer
-- than the slice without sleeping, it yields the CPU, and `moonfork status --json` counts it. This
-- works on any kernel, so these specs are never pending.
describe("--sched-slice, kept by the worker", function()
  after_each(function() helpers.stop_all() end)

  local function worker_status(ctl)
    local st, out, err = helpers.ctl(ctl, nil, "status", "--json")
    assert.are.equal(0, st, err)
    return helpers.json_decode(out).workers[1]
  end

  -- 200 pipelined requests of 100 us of CPU each, sent in one write: the worker answers them one
  -- after the other, about 20 ms of work without sleeping
  local function busy_batch(srv)
    local c = srv:connect()
    local batch = {}
    for i = 1, 200 do batch[i] = helpers.build_request("GET", "/spin?us=100") end
    assert(c:send(table.concat(batch)))
    for _ = 1, 200 do assert.are.equal("spun", assert(c:receive()).body) end
    c:close()
  end

  it("yields the CPU after a slice of work without a pause, and counts it in status (yields)", function()
    local ctl = helpers.mktempdir() .. "/control.sock"
    local srv = helpers.start("app", { "--workers", "1", "--control", ctl })
    local before = worker_status(ctl).yields
    assert.is_number(before)
    busy_batch(srv)
    assert.is_true(helpers.wait_for(function() return worker_status(ctl).yields > before end),
      "yields stayed at " .. tostring(before))
  end)

  it("never yields with --sched-slice 0", function()
    local ctl = helpers.mktempdir() .. "/control.sock"
    local srv = helpers.start("app", { "--workers", "1", "--control", ctl, "--sched-slice", "0" })
    busy_batch(srv)
    local w
    -- the counters reach the status with the worker's heartbeat: wait for the 200 requests
    assert.is_true(helpers.wait_for(function()
      w = worker_status(ctl)
      return w.requests >= 200
    end))
    assert.are.equal(0, w.yields)
  end)
end)
