-- chatlog: the chat's replicated message log, kept by every worker, in one global order.
--
-- Ordering: one worker, the sequencer, gives every message its id. The sequencer is the mesh leader
-- (nodes:leader()), which the master names: every worker hears the same name, and each change comes
-- with a higher epoch. Leadership only moves when the leader dies or is retired (a reload), so two
-- workers never number at once; a worker that hears a hello from a newer leader than it knows of
-- stops numbering before it answers.
--
--   post  A worker that receives POST /messages sends {t="post", k=KEY, user, text} to the leader.
--         KEY (the poster's id, spawn serial and a counter) is unique, so a post resent after the
--         leader died is recognised and not numbered twice.
--   msg   The leader numbers it (last id + 1), keeps it, and sends {t="msg", m=...} to every peer.
--         Messages from one worker to another arrive in the order written, so every worker sees the
--         leader's messages in id order; a worker extends its log only with the next id (anything
--         early waits in `early`), so clients only ever see a gap-free prefix.
--   hello {t="hello", last=N, epoch=E[, lead=true]} asks a peer for what it has after N; it answers
--         {t="state", last=..., synced=..., msgs=[...]}. A worker sends it to each peer that appears.
--
-- When the leader dies the next oldest takes over. Before numbering anything it asks every peer for
-- its state (some may have received a message from the old leader that others had not), merges,
-- sends each peer what it lacks, and only then numbers the posts that queued up meanwhile. Posters
-- whose posts were not answered resend them to the new leader; KEY makes that exactly-once.
--
-- Workers are named by id AND spawn serial ("id:serial": the leader, the peers, a post key's origin).
-- During a reload the retiring worker N and its replacement share the id N, and both live for a while:
-- by id alone the replacement would take the leader line meant for the old N as its own (two workers
-- numbering in one epoch), a retiring N would do the same when the new N is named, and an answer meant
-- for one would reach the other. A retiring worker answers a new leader's hello like any peer (the mesh
-- gives the replacement a stream of its own at once), so a take-over never waits for it to exit.
--
-- A worker started after the others (a respawn) is not "synced": it holds polls and streams until
-- a synced peer has sent it the log. The first generation of workers (spawn serial <= the worker
-- count) starts synced with an empty log. If every worker dies at once the log is lost: it lives in
-- memory only (with a Redis configured, server.lua uses streamlog.lua instead).
local cjson = require "cjson"
local moonfork = require "moonfork"

local encode, decode = cjson.encode, cjson.decode
local pairs, ipairs, pcall, type, tostring, tonumber = pairs, ipairs, pcall, type, tostring, tonumber
local time, remove, concat = os.time, table.remove, table.concat

local _M = {}

-- Creates the log for this worker. opts: keep (messages kept, default 500), workers (initial count).
function _M.new(nodes, opts)
  opts = opts or {}
  local self = {
    nodes = nodes,
    keep = opts.keep or 500,
    log = {},          -- kept messages, ascending ids
    last = 0,          -- id of the newest message in log
    early = {},        -- id -> message that arrived before its predecessor
    seen = {},         -- post key -> id, for the kept messages
    pending = {},      -- key -> function(id) for posts made here, not yet numbered
    pending_post = {}, -- key -> the post message, to resend to a new leader
    counter = 0,
    waiters = {},      -- function() -> true: called once, the next time the log grows
    listeners = {},    -- functions called every time the log grows
    synced = nodes.serial <= (opts.workers or 1),
    leader = nil,      -- the sequencer's "id:serial", once the master has named it
    epoch = 0,
    unsent = {},       -- posts that could not go to the leader yet (none known, or not connected)
    syncing = nil,     -- while taking over: peer "id:serial" -> true for each peer that has not answered
    queued = {},       -- posts received while syncing
    peers = {},        -- "id:serial" -> stream
    me = nodes.id .. ":" .. tostring(nodes.serial),
  }
  return setmetatable(self, { __index = _M })
end

local function client_json(m)
  return encode({ id = m.id, user = m.user, text = m.text, time = m.time })
end

-- Appends m when it is the next id; returns true if the log grew. `base` allows an empty log to
-- start anywhere: only a peer's state may set where a joining worker's log begins (a live message
-- must not, or the history before it would be skipped).
local function append(self, m, base)
  if m.id <= self.last then return false end
  if m.id ~= self.last + 1 and not (base and self.last == 0) then
    self.early[m.id] = m
    return false
  end
  m.json = client_json(m)
  m.prev = self.last
  local log = self.log
  log[#log + 1] = m
  self.last = m.id
  if m.k then self.seen[m.k] = m.id end
  if #log > self.keep then
    local old = remove(log, 1)
    if old.k then self.seen[old.k] = nil end
  end
  local nxt = self.early[self.last + 1]
  while nxt do
    self.early[nxt.id] = nil
    append(self, nxt, false)
    nxt = self.early[self.last + 1]
  end
  return true
end

-- Moves the log on to id n without the messages before it (they are lost to every worker).
local function skip_to(self, n)
  moonfork.log("chat: messages " .. (self.last + 1) .. " to " .. n .. " are gone from the leader's log too: skipped")
  self.last = n
  for id in pairs(self.early) do
    if id <= n then self.early[id] = nil end
  end
end

local function notify(self)
  local ls = self.listeners
  for i = 1, #ls do ls[i]() end
  local list = self.waiters
  if next(list) == nil then return end
  self.waiters = {}
  for fn in pairs(list) do fn() end
end

local send

-- Merges messages (from the leader, or a peer's state when `base`) and wakes whoever waits.
function _M:merge(msgs, base)
  local grew, gap = false, false
  for _, m in ipairs(msgs) do
    if append(self, m, base) then grew = true end
    if self.early[m.id] then gap = true end
    if m.k and self.pending_post[m.k] then
      local done = self.pending[m.k]
      self.pending[m.k] = nil
      self.pending_post[m.k] = nil
      if done then done(m.id) end
    end
  end
  if gap and self.leader ~= self.me then -- something is missing before these: ask for it
    send(self.peers[self.leader], { t = "hello", last = self.last })
  end
  if grew and self.synced then notify(self) end
end

function send(stream, t)
  if stream then stream:write(encode(t)) end
end

_M.ID_HINT = "since must be a whole number"

-- Turns a Last-Event-ID or ?since= value into a position in the log (nil: not one).
function _M:cursor(v)
  local n = tonumber(v or 0)
  if not n or n < 0 then return nil end
  return n - n % 1
end

function _M:is_after(id, last)
  return id > last
end

-- The messages after id n (the whole kept log when n is older than it).
function _M:after(n)
  local out, log = {}, self.log
  local i = #log
  while i >= 1 and log[i].id > n do i = i - 1 end
  for j = i + 1, #log do out[#out + 1] = log[j] end
  return out
end

local function wire(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = { id = m.id, user = m.user, text = m.text, time = m.time, k = m.k } end
  return out
end

-- Leader: number a post and send it to everyone.
local function sequence(self, p)
  local id = self.seen[p.k]
  if id then -- a resend of a post already numbered: answer the poster with the message again
    for _, m in ipairs(self.log) do
      if m.id == id then
        local origin = self.peers[p.k:match("^(%d+:%d+):")]
        if origin then send(origin, { t = "msg", m = wire({ m })[1] }) else self:merge({ m }) end
        return
      end
    end
  end
  local m = { id = self.last + 1, user = p.user, text = p.text, time = time(), k = p.k }
  local payload = encode({ t = "msg", m = m })
  for _, s in pairs(self.peers) do s:write(payload) end
  self:merge({ m })
end

-- A post to number. `from` is the peer that sent it (nil: made here). A worker that is not the leader
-- passes a post on only when it knows a newer leader than the sender did (p.e, the sender's epoch):
-- otherwise the sender knows better, this worker is about to hear it, and the post waits here.
-- Passing a post to a leader that is dying would lose it in the dead socket.
local function handle_post(self, p, from)
  if self.leader ~= self.me then
    local s = self.leader and self.peers[self.leader]
    if s and (not from or (tonumber(p.e) or 0) < self.epoch) then
      p.e = self.epoch
      if s:write(encode(p)) ~= nil then return end
    end
    self.unsent[#self.unsent + 1] = p
  elseif self.syncing then
    self.queued[#self.queued + 1] = p
  else
    sequence(self, p)
  end
end

-- Posts that waited for a leader: to it now (resent own posts are recognised by their key).
local function flush_unsent(self)
  local list = self.unsent
  self.unsent = {}
  local seen = {}
  for _, p in ipairs(list) do
    seen[p.k] = true
    handle_post(self, p)
  end
  for k, p in pairs(self.pending_post) do
    if not seen[k] then handle_post(self, p) end
  end
end

-- Sends every peer what it lacks after the last id it reported (nil: unknown, all we keep), and says
-- we are synced (an unsynced peer that only heard unsynced peers learns it here).
local function push_missing(self, reported)
  for id, s in pairs(self.peers) do
    local after = reported[id] or 0
    if after < self.last then send(s, { t = "msgs", msgs = wire(self:after(after)), synced = true }) end
  end
end

local function finish_sync(self)
  if not self.syncing then return end
  self.syncing = nil
  self.synced = true
  notify(self)
  -- a peer that answered early lacks what later answers brought (a message the previous leader sent
  -- to some peers only, just before it went): everyone gets it now, before we number anything
  push_missing(self, self.reported or {})
  self.reported = nil
  local q = self.queued
  self.queued = {}
  for _, p in ipairs(q) do handle_post(self, p) end
  flush_unsent(self) -- what waited here for a leader is ours to number now
end

-- The master named a new leader: take over (after learning what every peer has), or pass what we
-- hold to the new leader.
local function leader_changed(self, leader, epoch)
  if epoch <= self.epoch then return end
  if self.leader == self.me and leader ~= self.me then
    -- hand what we numbered to the successor first: some peers may not have it yet
    send(self.peers[leader], { t = "msgs", msgs = wire(self:after(self.led_from or 0)) })
  end
  self.epoch = epoch
  self.leader = leader
  if leader == self.me then
    self.syncing, self.reported, self.led_from = {}, {}, self.last
    local any = false
    for id, s in pairs(self.peers) do
      self.syncing[id] = true
      any = true
      send(s, { t = "hello", last = self.last, epoch = epoch, lead = true })
    end
    if not any then return finish_sync(self) end
    -- a peer that cannot answer (stuck) must not hold the chat forever
    moonfork.setTimeout(2000, function()
      if self.syncing and self.epoch == epoch then
        local ids = {}
        for k in pairs(self.syncing) do ids[#ids + 1] = k end
        moonfork.log("chat: taking over without an answer from worker(s) " .. concat(ids, ", ") .. " (id:serial)")
        finish_sync(self)
      end
    end)
  else
    if self.syncing then
      self.syncing = nil
      for _, p in ipairs(self.queued) do self.unsent[#self.unsent + 1] = p end
      self.queued = {}
    end
    flush_unsent(self)
  end
end

-- Our log grew from a worker that is not the leader (a previous leader's last messages, sent to some
-- peers only before it went): a follower passes them to the leader, the leader to everyone else, so a
-- message acknowledged by the previous leader is not lost for the workers that stay.
local function relay(self, before, from)
  local payload = encode({ t = "msgs", msgs = wire(self:after(before)) })
  if self.leader ~= self.me then
    local s = self.leader and self.peers[self.leader]
    if s then s:write(payload) end
    return
  end
  for id, s in pairs(self.peers) do
    if id ~= from then s:write(payload) end
  end
end

-- A peer's name: its worker id and spawn serial (a retiring worker and its replacement share the id).
local function peer_key(stream)
  return stream.id .. ":" .. tostring(stream.serial)
end

local function on_message(self, stream, raw)
  local ok, t = pcall(decode, raw)
  if not ok or type(t) ~= "table" then
    moonfork.log("chat: bad mesh message from worker " .. stream.id .. " ignored")
    return
  end
  local from = peer_key(stream)
  if t.t == "msg" or t.t == "msgs" then
    local before = self.last
    self:merge(t.msgs or { t.m })
    if t.synced and not self.synced then
      self.synced = true
      notify(self)
    end
    if self.last > before and from ~= self.leader then relay(self, before, from) end
  elseif t.t == "post" then
    handle_post(self, t, stream)
  elseif t.t == "hello" then
    -- from a leader taking over, newer than the one we know: stop numbering before answering
    if t.lead and (tonumber(t.epoch) or 0) > self.epoch then leader_changed(self, from, tonumber(t.epoch)) end
    send(stream, { t = "state", last = self.last, synced = self.synced, msgs = wire(self:after(tonumber(t.last) or 0)) })
  elseif t.t == "state" then
    local msgs = t.msgs or {}
    -- The leader's log starts after our last: we were cut off (a mesh stream dropped at its cap) for
    -- longer than it keeps, and what lies between is gone from every log. Go on from its oldest.
    if from == self.leader and msgs[1] and msgs[1].id > self.last + 1 then skip_to(self, msgs[1].id - 1) end
    self:merge(msgs, true)
    if not self.synced and t.synced then
      self.synced = true
      notify(self)
    end
    if self.syncing and self.syncing[from] then
      self.reported[from] = tonumber(t.last) or 0
      self.syncing[from] = nil
      if next(self.syncing) == nil then finish_sync(self) end
    end
  end
end

-- Wires the log to the mesh. Call once, after listen().
function _M:attach()
  local nodes = self.nodes
  nodes:on("node", function(stream)
    local key = peer_key(stream)
    self.peers[key] = stream
    stream:on("data", function(raw) on_message(self, stream, raw) end)
    stream:on("close", function()
      if self.peers[key] == stream then self.peers[key] = nil end
      if self.syncing and self.syncing[key] then
        self.syncing[key] = nil
        if next(self.syncing) == nil then finish_sync(self) end
      end
    end)
    send(stream, { t = "hello", last = self.last, epoch = self.epoch })
    if key == self.leader then flush_unsent(self) end
  end)
  -- a leader is a worker id and spawn serial: during a reload an old and a new worker share an id
  nodes:on("leader", function(id, epoch, serial)
    leader_changed(self, id .. ":" .. tostring(serial or nodes.leader_serial), epoch)
  end)
  if not self.synced then
    -- alone after a restart (no peer came): nothing to learn, start over
    moonfork.setTimeout(3000, function()
      if not self.synced and next(self.peers) == nil then
        moonfork.log("chat: no peer to sync from; starting with an empty log")
        self.synced = true
        notify(self)
      end
    end)
  end
end

-- Posts a message; done(id) runs once it has its global id.
function _M:post(user, text, done)
  self.counter = self.counter + 1
  local key = self.nodes.id .. ":" .. self.nodes.serial .. ":" .. self.counter
  local p = { t = "post", k = key, user = user, text = text, e = self.epoch }
  self.pending[key] = done
  self.pending_post[key] = p
  handle_post(self, p)
  return key
end

-- Drops a post's callback (its client left); the post itself still goes through.
function _M:forget(key)
  self.pending[key] = nil
end

-- Calls fn() every time the log grows (once this worker is synced), for as long as the worker lives.
function _M:listen(fn)
  self.listeners[#self.listeners + 1] = fn
end

-- Calls fn() once the log grows (and this worker is synced); returns a handle for unwait.
function _M:wait(fn)
  self.waiters[fn] = true
  return fn
end

function _M:unwait(fn)
  self.waiters[fn] = nil
end

return _M
