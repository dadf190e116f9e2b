-- spec/websocket_node_spec.lua: moonfork.websocket against a real client, Node's `ws` (npm; installed
-- in spec/node by tools/run-tests from spec/node/package-lock.json), through spec/node/ws_client.js:
-- compression negotiated by `ws` (with and without context takeover), echoes byte for byte, the close
-- handshake, 1009 for a message over maxPayload, order kept; and what an idle WebSocket costs the worker,
-- with a crowd of them held open by spec/node/ws_idle.js.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local node_dir = helpers.ROOT .. "/spec/node"
local have_ws = os.execute("command -v node >/dev/null 2>&1 && test -d " .. helpers.shell_quote(node_dir .. "/node_modules/ws"))

-- Runs a scenario of ws_client.js; returns what it printed, decoded.
local function scenario(port, name)
  local p = io.popen("cd " .. helpers.shell_quote(node_dir) .. " && node ws_client.js " .. port .. " " .. name .. " 2>&1")
  local out = p:read("*a")
  p:close()
  local ok, r = pcall(cjson.decode, out:match("[^\n]*{[^\n]*") or "")
  assert(ok, "ws_client.js printed: " .. out)
  return r
end

-- Holds n idle WebSockets to path open (spec/node/ws_idle.js) until the returned function is called.
local function crowd(port, path, n)
  local out = os.tmpname()
  local p = io.popen("cd " .. helpers.shell_quote(node_dir) .. " && exec node ws_idle.js " .. port .. " " .. path .. " "
    .. n .. " >" .. helpers.shell_quote(out) .. " 2>&1", "w")
  assert(helpers.wait_for(function()
    local text = helpers.read_file(out) or ""
    return text:find("open", 1, true) or text:find("error", 1, true)
  end))
  local text = helpers.read_file(out)
  os.remove(out)
  assert.are.equal("open " .. n, text:match("[^\n]*"))
  return function() p:close() end
end

-- The resident part of a process's C heap (the [heap] mapping of /proc/PID/smaps), in KiB.
local function heap_kib(pid)
  local text = assert(helpers.read_file("/proc/" .. pid .. "/smaps"))
  return tonumber(text:match("%[heap%]\n.-\nRss:%s*(%d+)")) or 0
end

describe("websocket with Node's ws client", function()
  if not have_ws then
    it("needs node and spec/node/node_modules/ws", function()
      pending("node or the ws package is missing (cd spec/node && npm ci): skipped")
    end)
    return
  end

  local srv

  before_each(function()
    srv = helpers.start("ws_app", { "--workers", "1" })
  end)

  after_each(function()
    helpers.stop_all()
  end)

  local function events()
    return cjson.decode(assert(srv:get("/events")).body)
  end

  it("negotiates permessage-deflate and the subprotocol, echoes text and binary exactly, and closes with 1000", function()
    local r = scenario(srv.port, "echo")
    assert.is_nil(r.error)
    assert.are.equal("chat", r.protocol)
    assert.is_truthy(r.extensions:find("permessage-deflate", 1, true))
    assert.are.equal(6, #r.messages)
    for _, m in ipairs(r.messages) do assert.is_true(m.same) end
    assert.is_true(r.messages[3].binary)
    assert.is_false(r.messages[2].binary)
    assert.are.equal(1000, r.close.code)
    assert.are.equal("true", events().compressed)
    assert.are.equal("http://node.test", events().origin)
    assert.is_true(helpers.wait_for(function() return events().closes[1] == "1000 bye" end))
  end)

  it("works with no context takeover both ways and a 10-bit server window", function()
    local r = scenario(srv.port, "takeover")
    assert.is_nil(r.error)
    assert.is_truthy(r.extensions:find("server_no_context_takeover", 1, true))
    assert.is_truthy(r.extensions:find("server_max_window_bits=10", 1, true))
    assert.are.equal(6, #r.messages)
    for _, m in ipairs(r.messages) do assert.is_true(m.same) end
    assert.are.equal(1000, r.close.code)
  end)

  it("closes with 1009 a message over maxPayload", function()
    local r = scenario(srv.port, "toobig")
    assert.are.equal(1009, r.close.code)
  end)

  it("keeps messages in order without compression when the script did not ask for it", function()
    local r = scenario(srv.port, "plain")
    assert.is_nil(r.error)
    assert.are.equal("", r.extensions)
    assert.are.equal(100, #r.messages)
    for _, m in ipairs(r.messages) do assert.is_true(m.same) end
    assert.are.equal(4001, r.close.code)
  end)

  it("holds an idle WebSocket the script keeps nothing for in under 0.4 KB of C heap and nothing in Lua", function()
    local N, worker = 2000, srv.workers[1]
    local function lua_kib() return cjson.decode(assert(srv:get("/events?gc=1")).body).lua_kb end
    crowd(srv.port, "/bare", 100)() -- warm up: the allocator and the Lua state as they will stay
    assert.is_true(helpers.wait_for(function() return events().open == 0 end))
    local heap0, lua0 = heap_kib(worker), lua_kib()
    local release = crowd(srv.port, "/bare", N)
    assert.are.equal(N, events().open)
    local heap1, lua1 = heap_kib(worker), lua_kib()
    release()
    local c_bytes, lua_bytes = (heap1 - heap0) * 1024 / N, (lua1 - lua0) * 1024 / N
    print(("websocket: %d idle: C heap +%.0f bytes, live Lua heap +%.0f bytes per connection"):format(N, c_bytes, lua_bytes))
    assert.is_true(helpers.wait_for(function() return events().open == 0 end))
    assert.is_true(c_bytes <= 400, ("C heap: %.0f bytes per connection"):format(c_bytes))
    assert.is_true(lua_bytes <= 50, ("live Lua heap: %.0f bytes per connection"):format(lua_bytes))
  end)
end)
