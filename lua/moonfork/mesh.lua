-- moonfork.mesh: the `nodes` object listen() returns: this worker's peers, as streams of messages.
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local cmesh = package.loaded["moonfork.core.mesh"] or {} -- absent in the master

local type, pairs, ipairs, error, tostring, setmetatable = type, pairs, ipairs, error, tostring, setmetatable
local sort, byte = table.sort, string.byte
local mesh_write, mesh_close, log, spawn = cmesh.write, cmesh.close, core.log, sched.spawn

local _M = {}

local Stream = {}
Stream.__index = Stream

-- One error reporter per event, made once: every handler runs in a pooled coroutine (it may sleep).
local reporters = {}
for _, event in ipairs { "data", "close", "drain", "node", "leader" } do
  reporters[event] = function(trace) log("error in mesh '" .. event .. "' callback: " .. trace) end
end

local function call(fn, event, a, b, c)
  spawn(fn, reporters[event], a, b, c)
end

local function emit(obj, event, a, b, c)
  local list = obj._on[event]
  if not list then return end
  local report = reporters[event]
  for i = 1, #list do spawn(list[i], report, a, b, c) end
end

local function on(obj, event, fn, events)
  if not events[event] then error("unknown event '" .. tostring(event) .. "'", 3) end
  if type(fn) ~= "function" then error("on(event, fn): fn must be a function", 3) end
  local list = obj._on[event]
  if not list then
    list = {}
    obj._on[event] = list
  end
  list[#list + 1] = fn
end

local stream_events = { data = true, close = true, drain = true }

function Stream:on(event, fn)
  on(self, event, fn, stream_events)
  return self
end

-- Sends one message (a string, up to 16 MiB) to this peer. Returns true; false when the peer is
-- slow (wait for "drain"); nil and an error when the stream is closed or the message is too big.
function Stream:write(msg)
  if type(msg) ~= "string" then
    if type(msg) == "number" then msg = tostring(msg) else error("stream:write(msg): msg must be a string", 2) end
  end
  return mesh_write(self._ud, msg)
end

function Stream:close()
  mesh_close(self._ud)
end

local nodes = { id = core.id, serial = core.serial, epoch = 0, _on = {} }
local open = {}    -- stream -> true, the live peers (during a reload two may share an id: a
                   -- retiring worker and its replacement, told apart by serial)

local nodes_events = { node = true, leader = true }

-- nodes:on("node", fn(stream)): fn runs for every live peer, those already there included.
function nodes:on(event, fn)
  on(self, event, fn, nodes_events)
  if event == "node" then
    for _, s in ipairs(self:peers()) do call(fn, event, s) end
  elseif event == "leader" and self._leader then
    call(fn, event, self._leader, self.epoch, self.leader_serial)
  end
  return self
end

-- The live peer streams, by worker id (then serial).
function nodes:peers()
  local list = {}
  for s in pairs(open) do list[#list + 1] = s end
  sort(list, function(a, b) return a.id < b.id or (a.id == b.id and a.serial < b.serial) end)
  return list
end

-- Sends msg to every live peer; returns how many it went to.
function nodes:broadcast(msg)
  local n = 0
  for s in pairs(open) do
    if s:write(msg) ~= nil then n = n + 1 end
  end
  return n
end

-- The id of the worker the master named leader (nil until it has: just after start). All workers
-- hear the same name, in the same order of changes (nodes.epoch counts them): the leader is the
-- oldest ready worker when the first workers are up, and changes only when it dies or is retired.
-- nodes:on("leader", fn(id, epoch, serial)) runs on each change (and at once when one is known);
-- `serial` (also nodes.leader_serial) tells the leader from a worker with its id during a reload.
function nodes:leader()
  return self._leader
end

---------------------------------------------------------------------------------------------------
-- Across hosts: nodes:publish / nodes:subscribe go through the Redis every host was given (--redis
-- URL, listen{ redis = URL }), as Redis channels named PREFIX .. channel. Every worker that subscribes
-- has its own subscription (README: why not one per host relayed over the mesh). nodes:broadcast
-- stays this host's mesh.

local PREFIX = "moonfork:nodes:"
local pubsub -- the worker's Redis client, made at the first publish or subscribe

local function redis_client()
  if not core.redis_url then return nil, "no Redis: start with --redis URL or listen{ redis = URL }" end
  if not pubsub then pubsub = require("moonfork.redis").client({ url = core.redis_url }) end
  return pubsub
end

local function check_channel(channel, what)
  if type(channel) == "number" then channel = tostring(channel) end
  if type(channel) ~= "string" or channel == "" then error(what .. ": channel must be a non-empty string", 3) end
  return channel
end

-- nodes:publish(channel, message) -> how many subscribed workers (of every host) it reached, or nil, err.
function nodes:publish(channel, message)
  channel = check_channel(channel, "nodes:publish(channel, message)")
  if type(message) == "number" then message = tostring(message) end
  if type(message) ~= "string" then error("nodes:publish(channel, message): message must be a string", 2) end
  local client, err = redis_client()
  if not client then return nil, err end
  return client:publish(PREFIX .. channel, message)
end

-- nodes:subscribe(channel, fn(message, channel)) -> sub (sub:close() ends it), or nil, err. fn runs in a
-- coroutine of its own for each message published to channel by any worker of any host, this one too.
function nodes:subscribe(channel, fn)
  channel = check_channel(channel, "nodes:subscribe(channel, fn)")
  if type(fn) ~= "function" then error("nodes:subscribe(channel, fn): fn must be a function", 2) end
  local client, err = redis_client()
  if not client then return nil, err end
  return client:subscribe(PREFIX .. channel, function(message) return fn(message, channel) end)
end

-- moonfork's own messages between workers (moonfork.websocket's publish): those that begin with byte
-- 0xFF are offered to `internal` first, and a message it takes (it returns true) is not a "data" event.
local internal

function _M.internal(fn) internal = fn end

-- The C core calls these (bind_mesh.c); it keeps the stream `peer` returns and calls back with it.
cmesh.on {
  peer = function(ud, id, serial)
    local s = setmetatable({ id = id, serial = serial, _ud = ud, _on = {} }, Stream)
    open[s] = true
    emit(nodes, "node", s)
    return s
  end,
  data = function(s, msg)
    if internal and byte(msg, 1) == 255 and internal(msg) then return end
    emit(s, "data", msg)
  end,
  drain = function(s) emit(s, "drain") end,
  close = function(s)
    open[s] = nil
    s.closed = true
    emit(s, "close")
  end,
  leader = function(id, serial, epoch)
    nodes._leader, nodes.leader_serial, nodes.epoch = id, serial, epoch
    emit(nodes, "leader", id, epoch, serial)
  end,
}

_M.nodes = nodes
return _M
