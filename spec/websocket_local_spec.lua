-- spec/websocket_local_spec.lua: moonfork.websocket.publishLocal (spec/fixtures/ws_local_app.lua), the
-- worker-local publish: it reaches the channel's subscribers in the publishing worker only (no mesh,
-- no Redis) and says how many it was written to, text or binary; bad arguments raise. The publish
-- that reaches every worker is spec/websocket_chan_spec.lua's.
local helpers = require "spec.helpers"
local wsc = require "spec.ws_client"
local cjson = require "cjson"

-- Upgrades c (a connection held by a known worker) to a WebSocket subscribed to channel ch.
local function subscriber(c, ch)
  assert(c:send(helpers.build_request("GET", "/sub?ch=" .. ch, { { "Upgrade", "websocket" },
    { "Connection", "Upgrade" }, { "Sec-WebSocket-Key", wsc.KEY }, { "Sec-WebSocket-Version", "13" } })))
  local resp = assert(c:receive())
  assert.are.equal(101, resp.status)
  return c
end

-- The next data frame (pings skipped).
local function next_data(c)
  while true do
    local f = assert(wsc.read_frame(c))
    if f.opcode == wsc.TEXT or f.opcode == wsc.BINARY then return f end
  end
end

-- publishLocal on the worker that holds connection c: {worker, written}.
local function publish_on(c, query)
  local r = assert(c:request("GET", "/local?" .. query))
  assert.are.equal(200, r.status, r.body)
  return cjson.decode(r.body)
end

describe("websocket.publishLocal", function()
  after_each(function() helpers.stop_all() end)

  it("reaches the subscribers in the publishing worker only, and returns how many", function()
    local srv = helpers.start("ws_local_app", { "--workers", "2" })
    local a1 = subscriber(helpers.conn_on(srv, 1, "/probe"), "room")
    local b1 = subscriber(helpers.conn_on(srv, 1, "/probe"), "room")
    local a2 = subscriber(helpers.conn_on(srv, 2, "/probe"), "room")
    local on1, on2 = helpers.conn_on(srv, 1, "/probe"), helpers.conn_on(srv, 2, "/probe")
    assert.are.same({ worker = 1, written = 2 }, publish_on(on1, "ch=room&m=one"))
    assert.are.same({ worker = 2, written = 1 }, publish_on(on2, "ch=room&m=two"))
    assert.are.same({ worker = 1, written = 0 }, publish_on(on1, "ch=nobody&m=x"))
    assert.are.same({ worker = 1, written = 2 }, publish_on(on1, "ch=room&m=%00%01&binary=1"))
    for _, c in ipairs { a1, b1 } do
      assert.are.equal("one", next_data(c).payload)
      local f = next_data(c) -- not "two": that stayed in worker 2
      assert.are.equal(wsc.BINARY, f.opcode)
      assert.are.equal("\0\1", f.payload)
    end
    assert.are.equal("two", next_data(a2).payload) -- the first a2 gets: not "one"
    assert.are.same({ worker = 2, written = 1 }, publish_on(on2, "ch=room&m=three"))
    assert.are.equal("three", next_data(a2).payload) -- nor the binary one
  end)

  it("raises for a bad channel, data that is not a string, an unknown kind", function()
    local srv = helpers.start("ws_local_app", { "--workers", "1" })
    local r = assert(srv:get("/misuse"))
    local errs = cjson.decode(r.body)
    assert.truthy(errs[1]:find("websocket.publishLocal(name, data): the channel must be a string of 1 to 1024 bytes", 1, true), errs[1])
    assert.truthy(errs[2]:find("websocket.publishLocal(name, data): data must be a string", 1, true), errs[2])
    assert.truthy(errs[3]:find("kind must be \"text\" or \"binary\"", 1, true), errs[3])
    -- raised at the caller's line, in the script
    for i = 1, 3 do assert.truthy(errs[i]:find("ws_local_app.lua:%d+:"), errs[i]) end
  end)
end)
