-- moonfork.mesh: the `nodes` object listen() returns: this worker's peers, as streams of messages.
local core = require "moonfork.core"

local type, pairs, ipairs, xpcall, error, tostring = type, pairs, ipairs, xpcall, error, tostring
local traceback, sort = debug.traceback, table.sort
local mesh_write, mesh_close, log = core.mesh_write, core.mesh_close, core.log

local _M = {}

local Stream = {}
Stream.__index = Stream

local function call(fn, what, ...)
  local ok, err = xpcall(fn, traceback, ...)
  if not ok then log("error in mesh '" .. what .. "' callback: " .. tostring(err)) end
end

local function emit(obj, event, ...)
  local list = obj._on[event]
  if not list then return end
  for i = 1, #list do call(list[i], event, ...) end
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
local streams = {} -- userdata -> stream
local open = {}    -- id -> stream, the live peers

local nodes_events = { node = true, leader = true }

-- nodes:on("node", fn(stream)): fn runs for every live peer, those already there included.
function nodes:on(event, fn)
  on(self, event, fn, nodes_events)
  if event == "node" then
    for _, s in ipairs(self:peers()) do call(fn, event, s) end
  elseif event == "leader" and self._leader then
    call(fn, event, self._leader, self.epoch)
  end
  return self
end

-- The live peer streams, by worker id.
function nodes:peers()
  local list = {}
  for _, s in pairs(open) do list[#list + 1] = s end
  sort(list, function(a, b) return a.id < b.id end)
  return list
end

-- Sends msg to every live peer; returns how many it went to.
function nodes:broadcast(msg)
  local n = 0
  for _, s in pairs(open) do
    if s:write(msg) ~= nil then n = n + 1 end
  end
  return n
end

-- The id of the worker the master named leader (nil until it has: just after start). All workers
-- hear the same name, in the same order of changes (nodes.epoch counts them): the leader is the
-- oldest ready worker when the first workers are up, and changes only when it dies or is retired.
-- nodes:on("leader", fn(id, epoch)) runs on each change (and at once when one is known).
function nodes:leader()
  return self._leader
end

core.mesh_handlers(
  function(ud, id, serial)
    local s = setmetatable({ id = id, serial = serial, _ud = ud, _on = {} }, Stream)
    streams[ud] = s
    open[id] = s
    emit(nodes, "node", s)
  end,
  function(ud, msg)
    local s = streams[ud]
    if s then emit(s, "data", msg) end
  end,
  function(ud)
    local s = streams[ud]
    if s then emit(s, "drain") end
  end,
  function(ud)
    local s = streams[ud]
    if not s then return end
    streams[ud] = nil
    if open[s.id] == s then open[s.id] = nil end
    s.closed = true
    emit(s, "close")
  end,
  function(id, serial, epoch)
    nodes._leader, nodes.leader_serial, nodes.epoch = id, serial, epoch
    emit(nodes, "leader", id, epoch)
  end)

_M.nodes = nodes
return _M
