-- spec/mesh_cap_spec.lua: a mesh stream dropped at its 64 MiB cap comes back (issue 13). The worker
-- that dropped it asks the master for a new pair; both workers see "close" for the old stream, then
-- "node" for the new one, and messages flow again both ways.
--
-- Driven like spec/mesh_spec.lua: spec/fixtures/mesh_app.lua runs each command on the worker named by
-- ?on=K (relayed over the mesh when another worker took the connection) and records what it received.
local helpers = require "spec.helpers"

local MiB = 1024 * 1024

local try_cmd, cmd, query_string = helpers.mesh_try_cmd, helpers.mesh_cmd, helpers.query_string

-- Polls a state (got() returns it, or nil) until pred(state) holds.
local function wait_until(got, pred, what, srv)
  local last
  local st = helpers.wait_for(function()
    local s = got()
    last = s
    if s and pred(s) then return s end
  end)
  assert(st, what .. " never held; last state: " .. (last and require("cjson").encode(last) or "none")
    .. "\nlog:\n" .. srv:log_text())
  return st
end

local function count_of(st, from, tag)
  local r = st.recv[tostring(from)]
  local t = r and r.tags[tag]
  return t and t.count or 0
end

-- The first and the last index of event `ev` in st.events.
local function indexes(st, ev)
  local first, last
  for i, e in ipairs(st.events) do
    if e == ev then
      first = first or i
      last = i
    end
  end
  return first, last
end

-- "close" for the stream to (id, serial), and after it a new "node" for the same worker.
local function reconnected(st, id, serial)
  local close = indexes(st, "close " .. id .. " " .. serial)
  local _, node = indexes(st, "node " .. id .. " " .. serial)
  return close ~= nil and node ~= nil and node > close
end

local function has_peer(st, id)
  for _, p in ipairs(st.peers) do if p.id == id then return true end end
  return false
end

describe("mesh cap", function()
  after_each(function()
    helpers.stop_all()
  end)

  it("makes a new pair after a stream is dropped at the cap: close then node on both sides, messages flow", function()
    local srv = helpers.start("mesh_app", { "--workers", "2" })
    for id = 1, 2 do
      wait_until(function() return try_cmd(srv, id, "state") end, function(s) return #s.peers == 1 end,
        "worker " .. id .. " has its peer", srv)
    end

    -- one worker spins (its loop does not run) until `file` exists; the other gets every connection
    local dir = helpers.mktempdir()
    local file = dir .. "/release"
    finally(function()
      local f = io.open(file, "wb")
      if f then f:close() end
      os.remove(file)
      os.remove(dir)
    end)
    local c = srv:connect()
    local stuck = helpers.json_decode(assert(c:request("GET", "/state")).body)
    local writer = stuck.id == 1 and 2 or 1
    assert(c:send(helpers.build_request("GET", "/block" .. query_string({ file = file }))))
    srv:wait_log("^mesh_app: worker " .. stuck.id .. " blocking until " .. helpers.escape_pattern(file))

    -- the writer floods the stuck worker until the cap drops the stream
    local res = cmd(srv, writer, "fill", { to = stuck.id, size = MiB, max = 80, stop = "nil" })
    assert.are.equal(1, res.nils, "the stream was never dropped")
    srv:wait_log("%[worker " .. writer .. " %d+%] mesh: worker " .. stuck.id .. " is not reading")

    -- the writer: "close" for the dropped stream, then "node" for the new one
    local wst = wait_until(function() return try_cmd(srv, writer, "state") end,
      function(s) return reconnected(s, stuck.id, stuck.serial) and has_peer(s, stuck.id) end,
      "the writer saw close then node for worker " .. stuck.id, srv)
    srv:wait_log("mesh: a new stream between workers " .. writer .. " and " .. stuck.id)

    -- the stuck worker, once it runs again: the same, for the writer
    local f = assert(io.open(file, "wb"))
    f:close()
    local resp = assert(c:receive())
    assert.are.equal(200, resp.status)
    local function stuck_state()
      local r = c:request("GET", "/state")
      return r and r.status == 200 and helpers.json_decode(r.body) or nil
    end
    local st = wait_until(stuck_state, function(s) return reconnected(s, writer, wst.serial) and has_peer(s, writer) end,
      "the stuck worker saw close then node for worker " .. writer, srv)
    assert.are.equal(stuck.pid, st.pid)

    -- messages flow again, both ways
    assert.are.equal(5, cmd(srv, writer, "send", { to = stuck.id, tag = "after", n = 5 }).trues)
    wait_until(stuck_state, function(s) return count_of(s, writer, "after") == 5 end,
      "the stuck worker got the 5 messages sent after the repair", srv)
    local back = c:request("GET", "/send" .. query_string({ to = writer, tag = "back", n = 3 }))
    assert.are.equal(200, back.status)
    wait_until(function() return try_cmd(srv, writer, "state") end,
      function(s) return count_of(s, stuck.id, "back") == 3 end, "the writer got the 3 messages sent back", srv)
    -- one new pair: neither worker has two streams to the other
    assert.are.equal(1, #st.peers)
    c:close()
  end)
end)
