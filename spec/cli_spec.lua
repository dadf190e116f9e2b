-- spec/cli_spec.lua: the command line: --version, --help, and every kind of start-up error, each of
-- which must end the process by itself with one "moonfork: " line on stderr.
local helpers = require "spec.helpers"
local socket = require "socket"

local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- the first stderr line that starts with "moonfork: "
local function error_line(stderr)
  for _, l in ipairs(lines(stderr)) do
    if l:sub(1, 10) == "moonfork: " then return l end
  end
  return nil
end

-- a bad command line: exit 2, stderr is exactly one "moonfork: " line, nothing on stdout
local function assert_usage_error(args, what)
  local status, out, err = helpers.run(args)
  assert.are.equal(2, status, "exit status; stderr: " .. err)
  local l = lines(err)
  assert.are.equal(1, #l, "stderr should be one line:\n" .. err)
  assert.are.equal("moonfork: ", l[1]:sub(1, 10))
  if what then assert.is_truthy(l[1]:lower():find(what:lower(), 1, true), l[1]) end
  assert.are.equal("", out)
  return l[1]
end

describe("cli", function()
  local app = helpers.fixture("app")

  after_each(function()
    helpers.stop_all()
  end)

  describe("--version", function()
    it("prints 'moonfork 0.1.0' on stdout and exits 0", function()
      local status, out, err = helpers.run({ "--version" })
      assert.are.equal(0, status)
      assert.are.equal("moonfork 0.1.0\n", out)
      assert.are.equal("", err)
    end)
  end)

  describe("--help", function()
    it("prints the usage with every option on stdout and exits 0", function()
      local status, out = helpers.run({ "--help" })
      assert.are.equal(0, status)
      assert.is_truthy(out:lower():find("usage", 1, true), out)
      for _, opt in ipairs({ "--host", "--port", "--workers", "--grace", "--max-header-size", "--max-body",
        "--header-timeout", "--keepalive-timeout", "--request-timeout", "--max-connections", "--sched-slice", "--help",
        "--version" }) do
        assert.is_truthy(out:find(opt, 1, true), opt .. " is missing from --help:\n" .. out)
      end
    end)
  end)

  describe("bad command lines", function()
    it("exits 2 with one line when no script is given", function()
      assert_usage_error({ "--port", "0" })
    end)

    it("exits 2 with one line naming an unknown option", function()
      assert_usage_error({ "--port", "0", "--no-such-option", app }, "--no-such-option")
    end)

    it("exits 2 for --workers abc", function()
      assert_usage_error({ "--port", "0", "--workers", "abc", app }, "workers")
    end)

    it("exits 2 for --port 70000", function()
      assert_usage_error({ "--port", "70000", app }, "port")
    end)

    it("exits 2 for --max-body=-1 given in the --opt=value form", function()
      assert_usage_error({ "--port=0", "--max-body=-1", app }, "max-body")
    end)

    it("exits 2 for --sched-slice 0.05, under the kernel's shortest slice (0.1 ms)", function()
      assert_usage_error({ "--port", "0", "--sched-slice", "0.05", app }, "bad value for sched-slice")
    end)

    it("exits 2 for an option missing its value", function()
      assert_usage_error({ "--port", "0", "--workers" })
    end)
  end)

  describe("script errors", function()
    it("exits non-zero with one 'moonfork: ' line when the script file does not exist", function()
      local missing = helpers.FIXTURES .. "/does_not_exist.lua"
      local status, _, err = helpers.run({ "--port", "0", "--workers", "1", missing })
      assert.are_not.equal(0, status)
      local l = error_line(err)
      assert.is_truthy(l, "no 'moonfork: ' line on stderr:\n" .. err)
      assert.is_truthy(l:find("does_not_exist.lua", 1, true), l)
      local n = 0
      for _, x in ipairs(lines(err)) do if x:sub(1, 10) == "moonfork: " then n = n + 1 end end
      assert.are.equal(1, n, err)
    end)

    it("exits 1 with the file and line of a syntax error", function()
      local status, _, err = helpers.run({ "--port", "0", "--workers", "1", helpers.fixture("syntax_error") })
      assert.are.equal(1, status, err)
      local l = error_line(err)
      assert.is_truthy(l, "no 'moonfork: ' line on stderr:\n" .. err)
      assert.is_truthy(l:find("syntax_error%.lua:4:"), l)
    end)

    it("exits 1 and mentions listen when the script never calls moonfork.listen()", function()
      local status, _, err = helpers.run({ "--port", "0", "--workers", "1", helpers.fixture("no_listen") })
      assert.are.equal(1, status, err)
      local l = error_line(err)
      assert.is_truthy(l, "no 'moonfork: ' line on stderr:\n" .. err)
      assert.is_truthy(l:find("listen", 1, true), l)
    end)
  end)

  describe("listen errors", function()
    it("exits 1 with 'address already in use' when the port is taken", function()
      local taken = assert(socket.bind("127.0.0.1", 0))
      local _, port = taken:getsockname()
      local ok, status, _, err = pcall(helpers.run, { "--port", tostring(port), "--workers", "1", app })
      taken:close()
      assert(ok, status)
      assert.are.equal(1, status, err)
      local l = error_line(err)
      assert.is_truthy(l, "no 'moonfork: ' line on stderr:\n" .. err)
      assert.is_truthy(l:lower():find("address already in use", 1, true), l)
    end)
  end)
end)
