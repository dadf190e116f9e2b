-- spec/chatlog_driver_spec.lua: examples/chat/chatlog.lua driven over a fake mesh, one exact
-- interleaving at a time. No server, no sockets, no clock: the spec decides when each mesh message
-- arrives, when a worker sees a stream ("node"), when the master's leader line reaches a worker, and
-- when a timer fires. What it plays is what the real mesh can do during a rolling reload: a retiring
-- worker and its replacement share a worker id (not a spawn serial), a stream to a new worker can stay
-- unread at one end while an older stream to the same id lives (mesh.c held such a stream until the old
-- one ended; it now holds one only behind a stream to the same worker or to a gone one, so each
-- scenario runs both ways), and the leader line reaches each worker on its own schedule. On the chat as
-- it was (workers named by id alone) 4 of these 9 fail: a post acknowledged twice with one id, two
-- workers numbering in one epoch, an acknowledged post that never reaches the new workers.
--
-- After every scenario the logs of the live workers must agree: ids gap-free from 1, one message per
-- id, and every post acknowledged to a client at the id every worker has it at (never two posts with
-- one id).
local cjson = require "cjson"

-- ---- the fake moonfork (log, timers) chatlog.lua requires -------------------------------------
local world -- the scenario being played
local fake = {
  log = function(msg) world.logs[#world.logs + 1] = msg end,
  setTimeout = function(ms, fn)
    local t = { at = world.now + ms, fn = fn }
    world.timers[#world.timers + 1] = t
    return t
  end,
  clearTimer = function(t) if t then t.cleared = true end end,
}
package.loaded.moonfork = fake
package.path = "./examples/chat/?.lua;" .. package.path
package.loaded.chatlog = nil
local chatlog = require "chatlog"

-- ---- the fake mesh -------------------------------------------------------------------------
local Stream = {}
Stream.__index = Stream
function Stream:on(ev, fn)
  self._on[ev] = self._on[ev] or {}
  table.insert(self._on[ev], fn)
  return self
end
function Stream:write(msg)
  if self.closed then return nil, "closed" end
  table.insert(self.queue, msg) -- read by the other end, in order, when the spec delivers it
  return true
end
function Stream:close() end -- chatlog never closes a stream
local function emit(obj, ev, ...)
  for _, fn in ipairs(obj._on[ev] or {}) do fn(...) end
end

local Nodes = {}
Nodes.__index = Nodes
function Nodes:on(ev, fn)
  self._on[ev] = self._on[ev] or {}
  table.insert(self._on[ev], fn)
  if ev == "node" then
    for _, s in ipairs(self.w.visible) do fn(s) end
  elseif ev == "leader" and self._leader then
    fn(self._leader, self.epoch, self.leader_serial)
  end
  return self
end
function Nodes:leader() return self._leader end

local function new_world(workers)
  world = { now = 0, timers = {}, logs = {}, workers = {}, links = {}, acks = {}, count = workers }
  return world
end

-- A worker (its id and spawn serial); `synced` follows chatlog's rule (first generation).
local function worker(id, serial)
  local w = { id = id, serial = serial, visible = {}, alive = true }
  w.nodes = setmetatable({ id = id, serial = serial, epoch = 0, _on = {}, w = w }, Nodes)
  w.log = chatlog.new(w.nodes, { workers = world.count })
  w.log:attach()
  w.name = id .. ":" .. serial
  world.workers[#world.workers + 1] = w
  return w
end

-- The end at worker `at` of a stream to worker `to`.
local function new_end(at, to)
  return setmetatable({ id = to.id, serial = to.serial, queue = {}, _on = {}, at = at, to = to }, Stream)
end

-- A mesh stream between a and b. show = { a = bool, b = bool }: whether each end is seen at once
-- (false: the end stays unread, as mesh.c held a stream to a worker id that had an older one open).
local function link(a, b, show_a, show_b)
  local ea, eb = new_end(a, b), new_end(b, a)
  ea.peer, eb.peer = eb, ea
  local l = { a = ea, b = eb }
  world.links[#world.links + 1] = l
  local function show(e)
    if e.shown or e.closed then return end
    e.shown = true
    table.insert(e.at.visible, e)
    emit(e.at.nodes, "node", e)
  end
  l.show_a, l.show_b = function() show(ea) end, function() show(eb) end
  if show_a ~= false then show(ea) end
  if show_b ~= false then show(eb) end
  return l
end

-- Delivers one message written at end e to its peer's worker; false when none can go.
local function deliver_one(e)
  local r = e.peer
  if #e.queue == 0 or not r.shown or r.closed or not r.at.alive then return false end
  local msg = table.remove(e.queue, 1)
  emit(r, "data", msg)
  return true
end

-- Delivers every message that can go, oldest link first, until none can.
local function flush()
  local moved = true
  while moved do
    moved = false
    for _, l in ipairs(world.links) do
      while deliver_one(l.a) do moved = true end
      while deliver_one(l.b) do moved = true end
    end
  end
end

-- The master's "leader" line reaches worker w.
local function lead(w, leader, epoch)
  local n = w.nodes
  n._leader, n.leader_serial, n.epoch = leader.id, leader.serial, epoch
  for _, fn in ipairs(n._on.leader or {}) do fn(leader.id, epoch, leader.serial) end
end

-- Worker w exits: what it wrote is read first, then every stream to it closes; held ends of streams
-- to another worker with the same id are seen then (mesh.c's successor).
local function exit(w)
  flush()
  w.alive = false
  for _, l in ipairs(world.links) do
    for _, pair in ipairs({ { l.a, l.b }, { l.b, l.a } }) do
      local mine, theirs = pair[1], pair[2]
      if mine.at == w and not theirs.closed then
        theirs.closed, mine.closed = true, true
        for i, s in ipairs(theirs.at.visible) do
          if s == theirs then table.remove(theirs.at.visible, i) break end
        end
        if theirs.shown then emit(theirs, "close") end
      end
    end
  end
  for _, l in ipairs(world.links) do
    if l.hold_until == w then
      if l.a.at.alive then l.show_a() end
      if l.b.at.alive then l.show_b() end
    end
  end
end

-- Time passes: every timer due by then fires, in order.
local function advance(ms)
  world.now = world.now + ms
  local fired = true
  while fired do
    fired = false
    table.sort(world.timers, function(x, y) return x.at < y.at end)
    for i, t in ipairs(world.timers) do
      if t.at <= world.now then
        table.remove(world.timers, i)
        if not t.cleared then t.fn() end
        fired = true
        break
      end
    end
  end
end

-- A client posts text on worker w; the acknowledgement (the id) is recorded.
local function post(w, text)
  w.log:post("u", text, function(id) world.acks[text] = id end)
end

-- Every live worker has the same gap-free log, and every acknowledged post sits at its id.
local function check_consistent()
  flush()
  local ref
  for _, w in ipairs(world.workers) do
    if w.alive then
      local texts = {}
      for i, m in ipairs(w.log.log) do
        assert.equal(i, m.id, "worker " .. w.name .. ": ids not gap-free: " .. cjson.encode(w.log.log))
        texts[i] = m.text
      end
      if ref then
        assert.are.same(ref.texts, texts, "workers " .. ref.name .. " and " .. w.name .. " disagree")
      else
        ref = { texts = texts, name = w.name }
      end
    end
  end
  local by_id, acked = {}, {}
  for text in pairs(world.acks) do acked[#acked + 1] = text end
  table.sort(acked)
  for _, text in ipairs(acked) do
    local id = world.acks[text]
    assert.is_nil(by_id[id], "id " .. id .. " acknowledged for two posts: " .. tostring(by_id[id]) .. ", " .. text)
    by_id[id] = text
    assert.equal(text, ref.texts[id], "post '" .. text .. "' acknowledged as " .. id .. " but the logs have "
      .. tostring(ref.texts[id]) .. " there: " .. cjson.encode(ref.texts))
  end
  return ref.texts
end

-- The two-worker rolling reload, up to the moment the master names the first new worker leader
-- (epoch 3). Returns the workers. `held`: model mesh.c before the fix (a stream to a new worker
-- waits unread behind the old stream to its id until that ends).
local function reload_two(held, before_e3)
  new_world(2)
  local w1a, w2a = worker(1, 1), worker(2, 2)
  link(w1a, w2a)
  lead(w1a, w1a, 1); lead(w2a, w1a, 1)
  post(w2a, "before")
  flush()
  -- slot 1: the new worker 1 is ready; the master pairs it with both, tells it the leader, retires
  -- the old worker 1 and names worker 2 (the oldest ready)
  local w1b = worker(1, 3)
  link(w1b, w1a)
  local l = link(w1b, w2a, true, not held) -- at w2a: behind its open stream to worker 1 (w1a)
  l.hold_until = w1a
  lead(w1b, w1a, 1)
  for _, w in ipairs({ w1a, w2a, w1b }) do lead(w, w2a, 2) end
  flush()
  -- slot 2: the same for worker 2; the first new worker leads
  local w2b = worker(2, 4)
  l = link(w2b, w1b, true, not held) -- at w1b: behind its open stream to worker 2 (w2a)
  l.hold_until = w2a
  link(w2b, w2a)
  lead(w2b, w2a, 2)
  if before_e3 then before_e3(w1a, w2a, w1b, w2b) end
  for _, w in ipairs({ w1a, w2a, w1b, w2b }) do lead(w, w1b, 3) end
  return w1a, w2a, w1b, w2b
end

describe("chatlog over a fake mesh", function()
  for _, held in ipairs({ true, false }) do
    local how = held and " (streams to a new worker held behind the old one's)" or " (every stream seen at once)"

    describe("during a rolling reload" .. how, function()
      it("numbers posts made on a retiring worker that shares the new leader's id exactly once, with the rest", function()
        local w1a, w2a, w1b, w2b = reload_two(held)
        flush()
        advance(2000) -- the new leader's sync gives up on peers that cannot answer (a held stream)
        -- clients still on the retiring worker 1, on the new worker 1 and on the new worker 2 post at
        -- the same time
        post(w1a, "on retiring 1")
        post(w1b, "on new 1")
        post(w2b, "on new 2")
        flush()
        exit(w1a); exit(w2a)
        flush(); advance(3000); flush()
        assert.equal(4, #check_consistent())
        for _, text in ipairs({ "on retiring 1", "on new 1", "on new 2" }) do assert.is_number(world.acks[text], text) end
      end)

      it("does not let a new worker that shares the leader's id number posts before the master names it", function()
        new_world(2)
        local w1a, w2a = worker(1, 1), worker(2, 2)
        link(w1a, w2a)
        lead(w1a, w1a, 1); lead(w2a, w1a, 1)
        flush()
        local w1b = worker(1, 3)
        link(w1b, w1a)
        local l = link(w1b, w2a, true, not held)
        l.hold_until = w1a
        lead(w1b, w1a, 1) -- "leader 1 serial 1": the old worker 1, not this one
        flush(); advance(2000); flush()
        -- the old leader's retirement has not reached anyone yet: both get a post
        post(w1b, "on new 1")
        post(w2a, "on old 2")
        flush()
        for _, w in ipairs({ w1a, w2a, w1b }) do lead(w, w2a, 2) end
        flush(); exit(w1a); flush(); advance(3000); flush()
        assert.equal(2, #check_consistent())
      end)

      it("delivers what the retiring leader numbered last, unsent when it heard of its successor, to everyone", function()
        local w1a, w2a, w1b, w2b = reload_two(held, function(w1a, w2a)
          -- the leader of epoch 2 (the old worker 2) numbers a post just before the line for epoch 3;
          -- its messages are still in its streams
          post(w2a, "last of epoch 2")
        end)
        post(w2b, "after")
        flush(); advance(2000); flush()
        exit(w1a); flush(); exit(w2a); flush(); advance(3000); flush()
        local texts = check_consistent()
        assert.are.same({ "before", "last of epoch 2", "after" }, texts)
      end)

      if not held then
        it("lets the new leader number as soon as every peer, the retiring ones too, has answered: no timer", function()
          local w1a, w2a, w1b, w2b = reload_two(held)
          post(w2b, "on new 2")
          post(w1a, "on retiring 1")
          flush() -- no time passes
          assert.is_nil(w1b.log.syncing, "the new leader still waits for a peer")
          assert.is_number(world.acks["on new 2"])
          assert.is_number(world.acks["on retiring 1"])
          assert.equal(0, #world.logs, table.concat(world.logs, "\n"))
          exit(w1a); exit(w2a); flush()
          assert.equal(3, #check_consistent())
        end)
      end

      it("brings a post acknowledged on a retiring worker that shares the leader's id to every new worker", function()
        local w1a, w2a, w1b, w2b = reload_two(held)
        flush(); advance(2000); flush()
        -- worker 1 (retiring) posts; the leader's answer must reach it, though a worker 1 (new) lives,
        -- and the message must reach the new worker 2 (which never had a stream to the old worker 1)
        post(w1a, "on retiring 1")
        flush()
        advance(2000); flush()
        assert.is_number(world.acks["on retiring 1"], "the retiring worker's client never got its id")
        exit(w1a); exit(w2a); flush(); advance(3000); flush()
        check_consistent()
      end)
    end)
  end
end)
