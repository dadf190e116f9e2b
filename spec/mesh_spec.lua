-- spec/mesh_spec.lua: the worker mesh end to end: peers and leader, broadcast, ordered delivery, big
-- messages and the size limit, a killed worker and its replacement, errors in callbacks, backpressure.
--
-- The fixture (spec/fixtures/mesh_app.lua) runs each command on the worker named by ?on=K, relaying it
-- over the mesh when another worker accepted the connection, so any worker can be driven and observed
-- whichever one the kernel hands a connection to. Each worker records what it received per sender.
local helpers = require "spec.helpers"

local MiB = 1024 * 1024

local try_cmd, cmd, query_string = helpers.mesh_try_cmd, helpers.mesh_cmd, helpers.query_string

-- Polls worker `on`'s /state until pred(state) is true; returns that state, or fails with the last one.
local function wait_state(srv, on, pred, what)
  local last
  local st = helpers.wait_for(function()
    local s, body = try_cmd(srv, on, "state")
    if s and s.error == nil then
      last = body
      if pred(s) then return s end
    else
      last = body
    end
  end)
  assert(st, string.format("worker %s: %s never held; last state: %s\nlog:\n%s", tostring(on), what,
    tostring(last), srv:log_text()))
  return st
end

local function peer_ids(st)
  local ids = {}
  for _, p in ipairs(st.peers) do ids[#ids + 1] = p.id end
  return ids
end

local function others(n, id)
  local ids = {}
  for i = 1, n do if i ~= id then ids[#ids + 1] = i end end
  return ids
end

-- counts of numbered messages with `tag` that worker state `st` received from `from`
local function tag_of(st, from, tag)
  local r = st.recv[tostring(from)]
  return r and r.tags[tag]
end

local function count_of(st, from, tag)
  local t = tag_of(st, from, tag)
  return t and t.count or 0
end

-- index of the first event equal to `ev` in st.events, or nil
local function event_index(st, ev)
  for i, e in ipairs(st.events) do if e == ev then return i end end
  return nil
end

-- Waits until every worker 1..n sees all the others as peers.
local function wait_mesh(srv, n)
  local states = {}
  for id = 1, n do
    states[id] = wait_state(srv, id, function(st) return #st.peers == n - 1 end, (n - 1) .. " peers")
  end
  return states
end

describe("mesh", function()
  after_each(function()
    helpers.stop_all()
  end)

  describe("nodes:peers() and nodes:leader()", function()
    it("with 4 workers each sees 3 peers (ids), and nodes:leader() agrees on all of them", function()
      local srv = helpers.start("mesh_app", { "--workers", "4" })
      local states = wait_mesh(srv, 4)
      local pids, oldest, oldest_serial = {}, nil, math.huge
      for id = 1, 4 do
        local st = states[id]
        assert.are.equal(id, st.id)
        assert.are.same(others(4, id), peer_ids(st))
        assert.is_nil(pids[st.pid], "two workers with one pid")
        pids[st.pid] = true
        if st.serial < oldest_serial then oldest, oldest_serial = id, st.serial end
      end
      -- the serial a worker has for a peer is the serial that peer has itself
      for id = 1, 4 do
        for _, p in ipairs(states[id].peers) do assert.are.equal(states[p.id].serial, p.serial) end
      end
      for _, w in ipairs(srv.workers) do assert.is_true(pids[w], "worker pid " .. w .. " not reported") end
      -- the master names the leader once all four are up; every worker hears the same name
      for id = 1, 4 do
        assert.are.equal(oldest, wait_state(srv, id, function(s) return s.leader ~= nil end, "a leader").leader,
          "worker " .. id .. " disagrees on the leader")
      end
      assert.are.equal(1, oldest)
    end)
  end)

  describe("nodes:broadcast()", function()
    it("reaches every other worker exactly once (not itself)", function()
      local srv = helpers.start("mesh_app", { "--workers", "4" })
      wait_mesh(srv, 4)
      local sender = 3
      assert.are.equal(3, cmd(srv, sender, "broadcast", { tag = "bc" }).n)
      -- a second broadcast after the first works as a fence: on one stream messages keep their order,
      -- so once it has arrived a duplicate of the first would have arrived too
      assert.are.equal(3, cmd(srv, sender, "broadcast", { tag = "fence" }).n)
      for _, id in ipairs(others(4, sender)) do
        local st = wait_state(srv, id, function(s) return count_of(s, sender, "fence") >= 1 end, "fence arrived")
        assert.are.equal(1, count_of(st, sender, "bc"), "worker " .. id .. " got the broadcast " ..
          count_of(st, sender, "bc") .. " times")
        assert.are.equal(0, tag_of(st, sender, "bc").disorder)
        assert.are.equal(1, count_of(st, sender, "fence"))
      end
      local self_st = cmd(srv, sender, "state")
      assert.is_nil(self_st.recv[tostring(sender)], "the broadcaster received from itself")
    end)
  end)

  describe("stream:write()", function()
    it("delivers 10,000 small messages from one worker to another complete and in order", function()
      local srv = helpers.start("mesh_app", { "--workers", "2" })
      wait_mesh(srv, 2)
      local res = cmd(srv, 1, "send", { to = 2, tag = "seq", n = 10000 })
      assert.are.equal(0, res.nils, "a write failed: " .. tostring(res.err))
      assert.are.equal(10000, res.trues + res.falses)
      local st = wait_state(srv, 2, function(s) return count_of(s, 1, "seq") >= 10000 end, "10000 messages")
      local t = tag_of(st, 1, "seq")
      assert.are.equal(10000, t.count)
      assert.are.equal(10000, t.last)
      assert.are.equal(0, t.disorder, "messages out of order or missing")
      -- every message "M|seq|i|" .. (i % 97 bytes), whole
      local bytes = 0
      for i = 1, 10000 do bytes = bytes + #("M|seq|" .. i .. "|") + i % 97 end
      assert.are.equal(bytes, t.bytes)
      -- and nothing went the other way
      assert.are.equal(0, count_of(cmd(srv, 1, "state"), 2, "seq"))
    end)

    it("delivers a 1 MiB message intact in one data call", function()
      local srv = helpers.start("mesh_app", { "--workers", "2" })
      wait_mesh(srv, 2)
      local res = cmd(srv, 2, "big", { to = 1, tag = "mib", size = MiB, seed = 12345 })
      assert.are.equal(true, res.ok, "write: " .. tostring(res.err))
      assert.are.equal(MiB, res.len)
      local st = wait_state(srv, 1, function(s)
        local r = s.recv["2"]
        return r and r.big.mib
      end, "the 1 MiB message arrived")
      local b = st.recv["2"].big.mib
      assert.are.equal(1, b.count, "it arrived in more than one data call")
      assert.are.equal(MiB, b.len)
      assert.are.equal(res.adler, b.adler)
      assert.is_true(b.intact)
    end)

    it("refuses a message over 16 MiB with EMSGSIZE to the writer, and nothing arrives", function()
      local srv = helpers.start("mesh_app", { "--workers", "2" })
      wait_mesh(srv, 2)
      local res = cmd(srv, 1, "big", { to = 2, tag = "huge", size = 16 * MiB + 1, seed = 1 })
      assert.is_nil(res.ok)
      assert.is_truthy(tostring(res.err):match("^EMSGSIZE: "), tostring(res.err))
      -- the stream still works, and a message written after the refused one arrives alone
      local after = cmd(srv, 1, "send", { to = 2, tag = "after", n = 1 })
      assert.are.equal(1, after.trues + after.falses)
      local st = wait_state(srv, 2, function(s) return count_of(s, 1, "after") == 1 end, "the message after")
      assert.is_nil(st.recv["1"].big.huge, "part of the refused message arrived")
      assert.is_nil(st.recv["1"].unknown, "garbage arrived")
      assert.are.same({ 2 }, peer_ids(cmd(srv, 1, "state")))
    end)
  end)

  describe("a worker killed with SIGKILL", function()
    it("is seen to close by the others, then its replacement joins (new pid, higher serial) and messages flow", function()
      local srv = helpers.start("mesh_app", { "--workers", "3" })
      local before = wait_mesh(srv, 3)
      local victim = before[1]
      assert.are.equal(1, victim.leader)
      assert.is_true(helpers.kill(victim.pid, "KILL"))
      srv:wait_log("worker 1 %(pid " .. victim.pid .. "%) killed by signal 9")
      local ready = srv:wait_log("worker 1 %(pid %d+%) ready", 2)
      local newpid = tonumber(ready:match("%(pid (%d+)%)"))
      assert.are_not.equal(victim.pid, newpid)

      local fresh = wait_state(srv, 1, function(s) return s.pid == newpid and #s.peers == 2 end,
        "the replacement is up with 2 peers")
      assert.is_true(fresh.serial > victim.serial, "serial " .. fresh.serial .. " not above " .. victim.serial)
      for _, p in ipairs(fresh.peers) do
        assert.is_true(p.serial < fresh.serial)
      end
      local gone = "close 1 " .. victim.serial
      local came = "node 1 " .. fresh.serial
      for _, id in ipairs({ 2, 3 }) do
        local st = wait_state(srv, id, function(s) return event_index(s, came) ~= nil end, "'" .. came .. "'")
        local i, j = event_index(st, gone), event_index(st, came)
        assert.is_truthy(i, "worker " .. id .. " never saw '" .. gone .. "': " .. table.concat(st.events, ", "))
        assert.is_true(i < j, "worker " .. id .. ": the replacement joined before the close: "
          .. table.concat(st.events, ", "))
        assert.are.same(others(3, id), peer_ids(st))
        for _, p in ipairs(st.peers) do
          if p.id == 1 then assert.are.equal(fresh.serial, p.serial) end
        end
        -- the oldest worker is now 2: everybody agrees
        assert.are.equal(2, st.leader)
      end
      -- the master names the leader right after the peers: wait for the replacement to have heard it
      wait_state(srv, 1, function(s) return s.pid == newpid and s.leader == 2 end, "the replacement's leader is 2")

      -- messages to and from the replacement
      local to = cmd(srv, 2, "send", { to = 1, tag = "hello", n = 100 })
      assert.are.equal(100, to.trues + to.falses)
      local from = cmd(srv, 1, "send", { to = 3, tag = "hi", n = 100 })
      assert.are.equal(100, from.trues + from.falses)
      local st1 = wait_state(srv, 1, function(s) return count_of(s, 2, "hello") == 100 end, "100 from 2")
      assert.are.equal(0, tag_of(st1, 2, "hello").disorder)
      local st3 = wait_state(srv, 3, function(s) return count_of(s, 1, "hi") == 100 end, "100 from 1")
      assert.are.equal(0, tag_of(st3, 1, "hi").disorder)
      assert.are.equal(fresh.serial, st3.recv["1"].serial)
    end)
  end)

  describe("a data callback that throws", function()
    it("is logged with a traceback and the worker keeps serving HTTP and mesh messages", function()
      local srv = helpers.start("mesh_app", { "--workers", "2" })
      wait_mesh(srv, 2)
      -- a keep-alive connection stays with the worker that accepted it
      local c = srv:connect()
      local resp = assert(c:request("GET", "/state"))
      assert.are.equal(200, resp.status)
      local victim = helpers.json_decode(resp.body)
      local other = victim.id == 1 and 2 or 1

      local res = cmd(srv, other, "throw", { to = victim.id, text = "on purpose" })
      assert.are.equal(true, res.ok)
      local line = srv:wait_log("%[worker " .. victim.id .. " %d+%] error in mesh 'data' callback: .*mesh data bomb: on purpose")
      assert.is_truthy(line:find("mesh_app.lua:%d+:"), line)
      srv:wait_log("%[worker " .. victim.id .. " %d+%] stack traceback:")

      -- still serving HTTP on the same connection, in the same process
      resp = assert(c:request("GET", "/state"))
      assert.are.equal(200, resp.status)
      local st = helpers.json_decode(resp.body)
      assert.are.equal(victim.pid, st.pid)
      assert.are.equal(victim.id, st.id)
      -- and mesh messages, both ways
      local sent = cmd(srv, other, "send", { to = victim.id, tag = "after", n = 50 })
      assert.are.equal(50, sent.trues + sent.falses)
      local back = cmd(srv, victim.id, "send", { to = other, tag = "back", n = 50 })
      assert.are.equal(50, back.trues + back.falses)
      wait_state(srv, victim.id, function(s) return count_of(s, other, "after") == 50 end, "50 after the error")
      wait_state(srv, other, function(s) return count_of(s, victim.id, "back") == 50 end, "50 back")
      assert.are.equal(0, srv:count_log("exited with status"))
      assert.are.equal(0, srv:count_log("killed by signal"))
      assert.is_true(helpers.alive(victim.pid))
      c:close()
    end)
  end)

  describe("a peer that stops reading", function()
    -- One worker runs /block on a keep-alive connection (its loop spins until `file` exists); the
    -- other worker then accepts every new connection. Returns the blocked worker's state before it
    -- blocked, the other's id, the connection and the release file.
    local function block_one(srv)
      local dir = helpers.mktempdir()
      local file = dir .. "/release"
      finally(function()
        -- never leave a worker spinning, whatever happened
        local f = io.open(file, "wb")
        if f then f:close() end
        os.remove(file)
        os.remove(dir)
      end)
      local c = srv:connect()
      local resp = assert(c:request("GET", "/state"))
      assert.are.equal(200, resp.status)
      local stuck = helpers.json_decode(resp.body)
      local writer = stuck.id == 1 and 2 or 1
      assert(c:send(helpers.build_request("GET", "/block" .. query_string({ file = file }))))
      srv:wait_log("^mesh_app: worker " .. stuck.id .. " blocking until " .. helpers.escape_pattern(file))
      return stuck, writer, c, file
    end

    local function release(file)
      local f = assert(io.open(file, "wb"))
      f:close()
    end

    it("makes stream:write return false past the high-water mark; once it reads again all arrives and 'drain' fires", function()
      local srv = helpers.start("mesh_app", { "--workers", "2" })
      wait_mesh(srv, 2)
      local stuck, writer, c, file = block_one(srv)

      -- 1 MiB messages until write says "slow down"; 40 of them would be far over the 4 MiB mark
      -- and still under the 64 MiB at which the stream is dropped
      local res = cmd(srv, writer, "fill", { to = stuck.id, size = MiB, max = 40, stop = "false" })
      assert.are.equal(0, res.nils, "a write failed: " .. tostring(res.err))
      assert.are.equal("false", res.last, "write never returned false")
      assert.are.equal(1, res.falses)
      local written = res.trues + res.falses
      assert.is_true(written * MiB > 4 * MiB, "false after only " .. written .. " MiB")
      -- nothing can drain while the peer does not read
      local wst = cmd(srv, writer, "state")
      assert.is_nil(wst.drains[tostring(stuck.id)])

      release(file)
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      assert.is_true(helpers.json_decode(resp.body).released)

      -- everything queued arrives, in order, on the blocked worker (asked on its own connection)
      local st = helpers.wait_for(function()
        local r = assert(c:request("GET", "/state"))
        local s = helpers.json_decode(r.body)
        if count_of(s, writer, "fill") >= written then return s end
      end)
      assert.is_truthy(st, "the queued messages never all arrived")
      assert.are.equal(stuck.pid, st.pid)
      local t = tag_of(st, writer, "fill")
      assert.are.equal(written, t.count)
      assert.are.equal(0, t.disorder)
      assert.are.equal(written * MiB, t.bytes)
      wait_state(srv, writer, function(s) return (s.drains[tostring(stuck.id)] or 0) >= 1 end, "'drain' fired")
      c:close()
    end)

    it("is dropped past 64 MiB queued: the writer gets ECLOSED, both sides see 'close', it is logged", function()
      local srv = helpers.start("mesh_app", { "--workers", "2" })
      wait_mesh(srv, 2)
      local stuck, writer, c, file = block_one(srv)

      local res = cmd(srv, writer, "fill", { to = stuck.id, size = MiB, max = 80, stop = "nil" })
      assert.are.equal(1, res.nils, "the stream was never dropped")
      assert.is_truthy(tostring(res.err):match("^ECLOSED: "), tostring(res.err))
      assert.is_true(res.falses >= 1, "write never returned false before the stream was dropped")
      assert.is_true(res.trues + res.falses <= 64, (res.trues + res.falses) .. " MiB accepted")
      srv:wait_log("%[worker " .. writer .. " %d+%] mesh: worker " .. stuck.id .. " is not reading")
      local wst = wait_state(srv, writer, function(s)
        return event_index(s, "close " .. stuck.id .. " " .. stuck.serial) ~= nil
      end, "'close' for the stuck worker")
      -- (the pair is then made again: spec/mesh_cap_spec.lua)

      release(file)
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      local st = helpers.wait_for(function()
        local r = assert(c:request("GET", "/state"))
        local s = helpers.json_decode(r.body)
        if event_index(s, "close " .. writer .. " " .. wst.serial) then return s end
      end)
      assert.is_truthy(st, "the stuck worker never saw 'close' for the writer")
      assert.are.equal(stuck.pid, st.pid)
      c:close()
    end)
  end)
end)
