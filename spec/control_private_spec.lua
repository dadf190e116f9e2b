-- spec/control_private_spec.lua: the control socket cannot be squatted (issue 13): the default socket
-- lives in a directory only its user can write, the client checks that the process it reached is the
-- master it means (uid and pid from the kernel, pid and port from a hello), and the master's side
-- closes idle clients, caps its connections and takes only whole numbers for scale.
local helpers = require "spec.helpers"
local socket = require "socket"
local unix = require "socket.unix"

local q = helpers.shell_quote

local free_port = helpers.free_port

-- Runs `moonfork ARGS` with XDG_RUNTIME_DIR=xdg; returns status, stdout, stderr.
local function run_with(xdg, args)
  local dir = helpers.mktempdir()
  local words = {}
  for i, a in ipairs(args) do words[i] = q(a) end
  local cmd = string.format("XDG_RUNTIME_DIR=%s %s %s >%s 2>%s </dev/null", q(xdg), q(helpers.BIN),
    table.concat(words, " "), q(dir .. "/out"), q(dir .. "/err"))
  local ok, how, code = os.execute(cmd)
  local status = type(ok) == "number" and ok / 256 or code
  local out, err = helpers.read_file(dir .. "/out"), helpers.read_file(dir .. "/err")
  helpers.sh("rm -rf " .. q(dir))
  return status, out, err
end

-- A squatter (spec/fixtures/control_squatter.lua) on path, once it listens.
local function squat(path, pid, port)
  local argv = { "lua", helpers.FIXTURES .. "/control_squatter.lua", path }
  if pid then argv[#argv + 1], argv[#argv + 2] = tostring(pid), tostring(port or 0) end
  local p = helpers.bg_start(argv)
  assert(helpers.wait_for(function()
    return (helpers.read_file(p.out) or ""):find("listening", 1, true) or helpers.bg_exited(p)
  end, 10))
  assert(not helpers.bg_exited(p), helpers.read_file(p.out))
  return p
end

local function stat(path)
  local p = io.popen("stat -c '%a %u %F' " .. q(path) .. " 2>/dev/null")
  local s = p:read("*l")
  p:close()
  return s
end

describe("control socket", function()
  after_each(function()
    helpers.bg_stop_all()
    helpers.stop_all()
  end)

  describe("its default place", function()
    it("is a private directory: a squatter at the old path does not make moonfork stop lie", function()
      local xdg, port = helpers.mktempdir(), free_port()
      local squatter = squat(xdg .. "/moonfork-" .. port .. ".sock") -- where the socket used to be
      local srv = helpers.start_env("reload_app", { "--workers", "1", "--port", tostring(port) },
        { XDG_RUNTIME_DIR = xdg })
      srv:wait_log("control socket: ")
      local st, out, err = run_with(xdg, { "stop", "--port", tostring(port) })
      assert.equal(0, st, err)
      assert.equal("stop: stopping\n", out)
      assert.equal(0, srv:exit_status(20), "the server still runs; log:\n" .. srv:log_text())
      helpers.bg_stop(squatter)
    end)

    it("is made with mode 0700 when missing", function()
      local xdg = helpers.mktempdir()
      local srv = helpers.start_env("reload_app", { "--workers", "1" }, { XDG_RUNTIME_DIR = xdg })
      srv:wait_log("control socket: " .. helpers.escape_pattern(xdg .. "/moonfork/moonfork-" .. srv.port .. ".sock"))
      assert.matches("^700 ", stat(xdg .. "/moonfork"))
      local st, out, err = run_with(xdg, { "status", "--json", "--port", tostring(srv.port) })
      assert.equal(0, st, err)
      assert.equal(srv.pid, helpers.json_decode(out).master.pid)
    end)

    it("is refused when group or others may write it, by the master and by the client", function()
      local xdg = helpers.mktempdir()
      assert(helpers.sh("mkdir -m 0777 " .. q(xdg .. "/moonfork")))
      assert(helpers.sh("chmod 0777 " .. q(xdg .. "/moonfork")))
      local srv = helpers.start_env("reload_app", { "--workers", "1" }, { XDG_RUNTIME_DIR = xdg })
      srv:wait_log("warning: no control socket: refusing .*group or others may write it")
      local st, _, err = run_with(xdg, { "status", "--port", tostring(srv.port) })
      assert.equal(1, st)
      assert.matches("refusing .*moonfork: group or others may write it", err)
    end)

    it("is refused when another user owns it", function()
      if not helpers.sh('test "$(id -u)" = 0') then
        pending("needs root, to give the directory to another user")
        return
      end
      local xdg = helpers.mktempdir()
      assert(helpers.sh("mkdir -m 0700 " .. q(xdg .. "/moonfork") .. " && chown 65534 " .. q(xdg .. "/moonfork")))
      local srv = helpers.start_env("reload_app", { "--workers", "1" }, { XDG_RUNTIME_DIR = xdg })
      srv:wait_log("warning: no control socket: refusing .*it belongs to uid 65534")
      local st, _, err = run_with(xdg, { "stop", "--port", tostring(srv.port) })
      assert.equal(1, st)
      assert.matches("belongs to uid 65534", err)
    end)
  end)

  describe("the client", function()
    it("refuses a process that does not answer as a master", function()
      local path = helpers.mktempdir() .. "/squat.sock"
      squat(path)
      local st, out, err = helpers.ctl(path, nil, "stop")
      assert.equal(1, st)
      assert.equal("", out)
      assert.matches("does not answer as a moonfork master", err)
    end)

    it("refuses a process that claims another's pid", function()
      local srv = helpers.start("reload_app", { "--workers", "1" })
      local path = helpers.mktempdir() .. "/squat.sock"
      squat(path, srv.pid, srv.port)
      local st, _, err = helpers.ctl(path, nil, "stop")
      assert.equal(1, st)
      assert.matches("does not answer as a moonfork master", err)
      assert.is_nil(srv:exited())
    end)

    it("refuses a master on another port than --port says", function()
      local path = helpers.mktempdir() .. "/control.sock"
      local srv = helpers.start("reload_app", { "--workers", "1", "--control", path })
      local other = srv.port == 65000 and 65001 or 65000
      local st, _, err = helpers.ctl(path, nil, "stop", "--port", tostring(other))
      assert.equal(1, st)
      assert.matches("serves port " .. srv.port .. ", not port " .. other, err)
      assert.is_nil(srv:exited())
      st, _, err = helpers.ctl(path, nil, "status", "--port", tostring(srv.port))
      assert.equal(0, st, err)
    end)

    it("refuses a master whose pid is not the one in --pid-file", function()
      local path = helpers.mktempdir() .. "/control.sock"
      local pidfile = helpers.mktempdir() .. "/pid"
      local srv = helpers.start("reload_app", { "--workers", "1", "--control", path, "--pid-file", pidfile })
      local wrong = helpers.mktempdir() .. "/wrong.pid"
      helpers.write_file(wrong, tostring(srv.pid + 100000) .. "\n")
      local st, _, err = helpers.ctl(path, nil, "stop", "--pid-file", wrong)
      assert.equal(1, st)
      assert.matches("is pid " .. srv.pid .. ", not pid", err)
      assert.is_nil(srv:exited())
      st, _, err = helpers.ctl(path, nil, "status", "--pid-file", pidfile)
      assert.equal(0, st, err)
    end)
  end)

  describe("the master's side", function()
    local srv, path

    before_each(function()
      path = helpers.mktempdir() .. "/control.sock"
      srv = helpers.start("reload_app", { "--workers", "1", "--control", path })
      srv:wait_log("control socket: ")
    end)

    -- A connection to the master's socket. luasocket's unix connect can report success on a socket
    -- that did not connect (the listen queue was full); such a socket fails every read, so try again.
    local function connect()
      return assert(helpers.wait_for(function()
        local c = assert(unix())
        if c:connect(path) then
          c:settimeout(0)
          local _, err = c:receive(1)
          if err == "timeout" or err == "closed" then return c end
        end
        c:close()
      end))
    end

    it("closes a client that sends nothing", function()
      local c = connect()
      c:settimeout(helpers.DEADLINE)
      local data, err, partial = c:receive("*a")
      assert.equal("", data or partial)
      assert.is_true(err == nil or err == "closed", err)
      c:close()
    end)

    it("caps its connections and logs it, and answers again once they close", function()
      local conns = {}
      for i = 1, 70 do conns[i] = connect() end
      srv:wait_log("control socket: 64 connections open, refusing more")
      for _, c in ipairs(conns) do c:close() end
      assert(helpers.wait_for(function()
        local st = helpers.ctl(path, nil, "status")
        return st == 0
      end))
    end)

    it("answers 'scale 2abc' with an error and changes nothing", function()
      local c = connect()
      c:settimeout(helpers.DEADLINE)
      assert(c:send("scale 2abc\n"))
      local reply = c:receive("*l")
      c:close()
      local r = helpers.json_decode(reply)
      assert.is_false(r.ok)
      assert.matches("worker count", r.error)
      assert.equal(1, #helpers.json_decode(select(2, helpers.ctl(path, nil, "status", "--json"))).workers)
    end)
  end)
end)
