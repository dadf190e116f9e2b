-- spec/chat_mesh_cap_spec.lua: the chat catches up after its mesh stream to the leader was dropped at
-- the 64 MiB cap (issue 13). A worker that stops (SIGSTOP) while the leader keeps broadcasting is cut
-- off at the cap; the master pairs the two again, and once the worker runs again it hears the new
-- stream's "node", says hello, and serves the leader's messages again, old and new.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local CHAT = helpers.ROOT .. "/examples/chat/server.lua"
local decode = helpers.json_decode

-- Each message's text is 2,000 control characters: "\u0001" in JSON, so about 12 KB per message
-- on the mesh, and a few thousand fill 64 MiB.
local BODY = '{"user":"flood","text":"' .. string.rep("\\u0001", 2000) .. '"}'

-- Posts n messages on c, pipelined; returns the last id.
local function post_batch(c, n)
  local req = helpers.build_request("POST", "/messages", { { "Content-Type", "application/json" } }, BODY)
  assert(c:send(string.rep(req, n)))
  local last
  for _ = 1, n do
    local r = assert(c:receive())
    assert.equal(201, r.status, r.body)
    last = decode(r.body).id
  end
  return last
end

describe("chat after a mesh stream was dropped at its cap", function()
  after_each(function()
    helpers.stop_all()
  end)

  it("pairs the workers again and the cut-off worker catches up", function()
    local srv = helpers.start_env(CHAT, { "--workers", "2", "--keepalive-timeout", "300", "--watchdog", "0" }, {})
    local leader = tonumber(srv:wait_log("mesh leader: worker %d+"):match("mesh leader: worker (%d+)"))
    local other = leader == 1 and 2 or 1
    local to_leader = helpers.conn_on(srv, leader, "/style.css", "HEAD")
    local to_other = helpers.conn_on(srv, other, "/style.css", "HEAD")
    local other_pid = helpers.worker_of(srv, to_other)
    assert(helpers.kill(other_pid, "STOP"))
    finally(function() helpers.kill(other_pid, "CONT") end)

    -- the leader broadcasts every message to the stopped worker until the stream is dropped
    local last, posted = 0, 0
    local cut = "mesh: worker " .. other .. " is not reading"
    while srv:count_log(cut) == 0 do
      assert(posted < 40000, "the stream was never dropped; log:\n" .. srv:log_text())
      last = post_batch(to_leader, 50)
      posted = posted + 50
    end
    assert(helpers.kill(other_pid, "CONT"))

    -- the cut-off worker serves the leader's latest messages again (the last ones it may have
    -- missed), and the ones posted after
    local function newest_on_other()
      local r = to_other:request("GET", "/messages?since=" .. (last - 1))
      if not r or r.status ~= 200 then return nil end
      local msgs = decode(r.body).messages
      return msgs[#msgs] and msgs[#msgs].id
    end
    assert(helpers.wait_for(function() return newest_on_other() == last end),
      "worker " .. other .. " never caught up to id " .. last .. "; log:\n" .. srv:log_text())
    srv:wait_log("mesh: a new stream between workers " .. leader .. " and " .. other)
    local r = to_leader:request("POST", "/messages", { { "Content-Type", "application/json" } },
      cjson.encode({ user = "u", text = "after" }))
    assert.equal(201, r.status)
    last = decode(r.body).id
    assert(helpers.wait_for(function() return newest_on_other() == last end),
      "worker " .. other .. " never got the message posted after; log:\n" .. srv:log_text())
  end)
end)
