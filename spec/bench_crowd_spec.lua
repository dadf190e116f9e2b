-- spec/bench_crowd_spec.lua: bench/crowd's client (bench/crowd/crowd.c) checks what it is sent: each
-- stream must get message 0, 1, 2, ... once each, in order. A scripted SSE server
-- (spec/fixtures/crowd_feed.lua) sends it given sequences, its tokens cut between reads and chunks.
local helpers = require "spec.helpers"

local CROWD = helpers.ROOT .. "/bench/crowd/crowd"
local MARK = "crowd:spec01:"

-- runs `crowd hold` against srv with the stream /events?seq=SEQ; returns its RESULT table
local function hold(srv, clients, messages, seq, extra)
  local path = "/events?mark=" .. MARK .. "&seq=" .. seq .. (extra or "")
  local cmd = string.format("timeout 60 %s hold --port %d --clients %d --messages %d --mark %s --path %s "
    .. "--src 127.0.3.1,127.0.3.2 --connect-timeout 20 2>&1", helpers.shell_quote(CROWD), srv.port, clients,
    messages, MARK, helpers.shell_quote(path))
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  local json = out:match("RESULT (%b{})")
  assert(json, "no RESULT line from crowd hold:\n" .. out)
  return helpers.json_decode(json), out
end

describe("bench/crowd client", function()
  local srv
  before_each(function() srv = helpers.start("crowd_feed") end)
  after_each(function() helpers.stop_all() end)

  it("counts every message of an in-order stream once, its tokens cut between reads", function()
    local r = hold(srv, 3, 3, "0,1,2")
    assert.same({ 3, 3, 9, 9, 0, 0, 0, 0, 3 },
      { r.connected, r.clients, r.expected, r.received, r.lost, r.repeats, r.skipped, r.dropped, r.complete_streams })
  end)

  it("reports a repeated message, an older one after a newer, and a skipped one", function()
    -- per stream: 0, 1 ok; 1 again (repeat); 3 skips 2; 2 after 3 (repeat); 4 ok: 4 of 5 received
    local r = hold(srv, 2, 5, "0,1,1,3,2,4")
    assert.same({ 2, 8, 2, 4, 2, 2 }, { r.connected, r.received, r.lost, r.repeats, r.skipped, r.complete_streams })
  end)

  it("counts a stream the server ends as dropped, and what it missed as lost", function()
    local r = hold(srv, 2, 3, "0", "&finish=1")
    assert.same({ 2, 2, 2, 4, 0 }, { r.connected, r.dropped, r.received, r.lost, r.complete_streams })
  end)

  it("counts streams that are refused as connection errors, and still reports", function()
    local dead = helpers.free_port()
    local p = assert(io.popen(string.format("timeout 60 %s hold --port %d --clients 2 --messages 1 --mark %s "
      .. "--connect-timeout 20 2>&1", helpers.shell_quote(CROWD), dead, MARK)))
    local out = p:read("*a")
    p:close()
    local res = helpers.json_decode(assert(out:match("RESULT (%b{})"), out))
    assert.same({ 0, 2 }, { res.connected, res.conn_errors })
  end)
end)
