-- spec/sanitized_exit_spec.lua: a worker built with the sanitizers exits 0 (issue 13): its Lua state is
-- closed at exit, so lua-cjson's buffer (and whatever else a finaliser frees) is not reported as a leak.
-- Needs a sanitized build: MOONFORK_SANITIZED_BIN=path/to/moonfork, made with
--   cmake -S . -B build-asan -DMOONFORK_SANITIZE=address,undefined && cmake --build build-asan
-- (pending without it).
local helpers = require "spec.helpers"

local BIN = os.getenv("MOONFORK_SANITIZED_BIN")

local function start_sanitized(args)
  local bin = helpers.BIN
  helpers.BIN = BIN
  local ok, srv = pcall(helpers.start_env, "app", args, { MOONFORK_LUA_DIR = helpers.ROOT .. "/lua" })
  helpers.BIN = bin
  assert(ok, srv)
  return srv
end

describe("a sanitized worker", function()
  after_each(function()
    helpers.stop_all()
  end)

  it("exits 0 after using cjson, with no leak reported", function()
    if not BIN or BIN == "" then
      pending("set MOONFORK_SANITIZED_BIN to a build made with -DMOONFORK_SANITIZE=address,undefined")
      return
    end
    local bin = helpers.BIN
    helpers.BIN = BIN
    local ok, srv = pcall(helpers.start_env, "app", { "--workers", "1" }, { MOONFORK_LUA_DIR = helpers.ROOT .. "/lua" })
    helpers.BIN = bin
    assert(ok, srv)
    local r = assert(srv:get("/id")) -- res:json: cjson is loaded and encodes
    assert.are.equal(200, r.status)
    local worker = srv.workers[1]
    srv:signal("TERM")
    assert.are.equal(0, srv:exit_status(60), srv:log_text())
    srv:wait_log("worker 1 %(pid " .. worker .. "%) exited with status 0")
    assert.is_nil(srv:log_text():find("LeakSanitizer", 1, true), srv:log_text())
  end)

  it("has a master that answers a reload through the control socket and exits 0, with nothing reported", function()
    if not BIN or BIN == "" then
      pending("set MOONFORK_SANITIZED_BIN to a build made with -DMOONFORK_SANITIZE=address,undefined")
      return
    end
    local srv = start_sanitized({ "--workers", "1" })
    local status, out = helpers.run({ "reload", "--port", tostring(srv.port) }, 60)
    assert.are.equal(0, status, out .. srv:log_text())
    srv:wait_log("reload done")
    srv:signal("TERM")
    assert.are.equal(0, srv:exit_status(60), srv:log_text())
    assert.is_nil(srv:log_text():find("Sanitizer", 1, true), srv:log_text())
  end)
end)
