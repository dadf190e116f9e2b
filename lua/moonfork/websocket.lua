-- moonfork.websocket: upgrade(req, res, opts) turns a request into a WebSocket (RFC 6455, with
-- permessage-deflate, RFC 7692). The handshake's checks on the request are here; the 101, the frames,
-- the close handshake and compression are C's (server/bind_ws.c, ws_conn.c).
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local cws = package.loaded["moonfork.core.ws"] or {} -- absent in the master, which never serves

local type, tostring, tonumber, error, pairs, concat = type, tostring, tonumber,
  error, pairs, table.concat
local find, lower, match, gmatch = string.find, string.lower, string.match, string.gmatch
local accept, send, close, spawn, log = cws.accept, cws.send, cws.close, sched.spawn, core.log
local gen_of = (package.loaded["moonfork.core.http"] or {}).gen -- the request a response is for
local listener, listen, state, field = cws.listener, cws.listen, cws.state, cws.field
local subscribe, unsubscribe, cpublish, envelope, deliver = cws.subscribe, cws.unsubscribe, cws.publish,
  cws.envelope, cws.deliver

local OP_TEXT, OP_BINARY, OP_PING = 1, 2, 9
local DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024

local _M = { _VERSION = "0.1.0" }

-- A `ws` is a userdata made by C with one metatable for all (server/bind_ws.c): no table per
-- connection. Its methods are here; protocol, origin and compressed are read from C.
local WS = {}
if cws.meta then
  cws.meta.__index = function(self, k)
    local m = WS[k]
    if m ~= nil then return m end
    return field(self, k)
  end
  cws.meta.__newindex = function(_, k)
    error("ws." .. tostring(k) .. " = ...: a ws takes no fields of its own (keep a table keyed by the ws)", 2)
  end
end

-- One error reporter per event, made once: listeners run in pooled coroutines (they may wait).
local reporters = {}
for _, event in pairs { "message", "close", "drain" } do
  reporters[event] = function(trace) log("error in websocket '" .. event .. "' callback: " .. trace) end
end

-- C keeps a registry ref per event, set only once something listens: the function itself while it
-- is alone (the common case: no table), else a table of them.
local events = { message = 1, close = 2, drain = 3 }

local function emit(l, report, a, b)
  if type(l) == "function" then
    spawn(l, report, a, b)
  else
    for i = 1, #l do spawn(l[i], report, a, b) end
  end
end

function WS:on(event, fn)
  local i = events[event]
  if not i then error("ws:on(): unknown event '" .. tostring(event) .. "'", 2) end
  if type(fn) ~= "function" then error("ws:on(event, fn): fn must be a function", 2) end
  local code, reason = state(self)
  if code then -- already closed: "close" now rather than never, the others never
    if event == "close" then spawn(fn, reporters.close, code, reason) end
    return self
  end
  local l = listener(self, i)
  if l == nil then
    listen(self, i, fn)
  elseif type(l) == "function" then
    listen(self, i, { l, fn })
  else
    l[#l + 1] = fn
  end
  return self
end

local function payload(data, fname)
  local t = type(data)
  if t == "string" then return data end
  if t == "number" then return tostring(data) end
  error("ws:" .. fname .. "(): data must be a string", 3)
end

-- Sends a whole message: true, false (over the high-water mark: wait for "drain"), nil, "closed".
function WS:send(data, kind)
  if kind == nil and type(data) == "string" then return send(self, data, OP_TEXT) end -- the hot path
  data = payload(data, "send")
  local op = OP_TEXT
  if kind == "binary" then
    op = OP_BINARY
  elseif kind ~= nil and kind ~= "text" then
    error("ws:send(data, kind): kind must be \"text\" or \"binary\"", 2)
  end
  return send(self, data, op)
end

function WS:ping(data)
  data = data == nil and "" or payload(data, "ping")
  if #data > 125 then error("ws:ping(data): at most 125 bytes", 2) end
  return send(self, data, OP_PING)
end

local function code_ok(code)
  return code % 1 == 0 and ((code >= 1000 and code <= 1014 and code ~= 1004 and code ~= 1005 and code ~= 1006)
    or (code >= 3000 and code <= 4999))
end

-- Starts the close handshake; "close" follows when the client answers (or leaves).
function WS:close(code, reason)
  if code ~= nil and (type(code) ~= "number" or not code_ok(code)) then
    error("ws:close(code): code must be 1000-1003, 1007-1014 or 3000-4999", 2)
  end
  if reason ~= nil then
    if type(reason) ~= "string" or #reason > 123 then error("ws:close(code, reason): reason must be a string of at most 123 bytes", 2) end
    if code == nil then code = 1000 end
  end
  close(self, code or 1000, reason)
end

---------------------------------------------------------------------------------------------------
-- channels: ws:subscribe(name), ws:unsubscribe(name), publish(name, data[, "binary"]). The members and
-- the sending are C's (server/ws_chan.c); here, the way to the other workers and hosts.

local CHANNEL_MAX = 1024
local REDIS_CHANNEL = "moonfork.websocket" -- nodes:publish's channel for every host's publishes
local nodes -- this worker's mesh (moonfork.mesh), once needed
local remote -- with --redis: this worker's subscription, started at its first ws:subscribe

-- The channel name checked; raises at the level of the caller's caller (or `level`).
local function channel(name, what, level)
  if type(name) == "number" then name = tostring(name) end
  if type(name) ~= "string" or #name < 1 or #name > CHANNEL_MAX then
    error(what .. ": the channel must be a string of 1 to " .. CHANNEL_MAX .. " bytes", level or 3)
  end
  return name
end

local function mesh()
  if not nodes then nodes = require("moonfork.mesh").nodes end
  return nodes
end

local report_remote = function(trace) log("websocket: the Redis subscription failed: " .. trace) end

-- With --redis every publish goes through Redis (nodes:publish), which brings it back to every worker
-- of every host that subscribed, this one too: each worker subscribes once, at its first ws:subscribe.
local function subscribe_remote()
  remote = true
  spawn(function()
    local sub, err = mesh():subscribe(REDIS_CHANNEL, function(msg) deliver(msg) end)
    if not sub then
      remote = nil
      log("websocket: could not subscribe to Redis for publish(): " .. tostring(err))
    end
  end, report_remote)
end

-- Joins channel `name`: true, false when a member already, nil, "closed". Left when the ws closes.
function WS:subscribe(name)
  name = channel(name, "ws:subscribe(name)")
  local ok, err = subscribe(self, name)
  if ok ~= nil and not remote and core.redis_url then subscribe_remote() end
  return ok, err
end

-- Leaves channel `name`: true, or false when not a member.
function WS:unsubscribe(name)
  return unsubscribe(self, channel(name, "ws:unsubscribe(name)"))
end

-- The checked arguments of a publish: the channel, the data (a string), the opcode. `fname` names the
-- function in errors, raised at its caller's level.
local function publish_args(fname, name, data, kind)
  name = channel(name, fname .. "(name, data)", 4)
  if type(data) == "number" then data = tostring(data) end
  if type(data) ~= "string" then error(fname .. "(name, data): data must be a string", 3) end
  if kind == nil or kind == "text" then return name, data, OP_TEXT end
  if kind == "binary" then return name, data, OP_BINARY end
  error(fname .. "(name, data, kind): kind must be \"text\" or \"binary\"", 3)
end

-- Sends data to every subscriber of `name` in every worker (and, with --redis, every host): true, or
-- nil, err when Redis failed.
function _M.publish(name, data, kind)
  local op
  name, data, op = publish_args("websocket.publish", name, data, kind)
  if core.redis_url then
    local n, err = mesh():publish(REDIS_CHANNEL, envelope(name, data, op))
    if n == nil then return nil, err end
    return true
  end
  mesh():broadcast(envelope(name, data, op)) -- first: the other workers write while this one does
  cpublish(name, data, op)
  return true
end

-- Sends data to every subscriber of `name` in THIS worker only (no mesh, no Redis) and returns how many
-- it was written to: moonfork.http.publish's twin. For a script that keeps a log in every worker and
-- publishes from the callback that grew it: a socket that catches up from the log and then subscribes
-- neither misses nor repeats a message (the chat's WebSockets, examples/chat/server.lua).
function _M.publishLocal(name, data, kind)
  local op
  name, data, op = publish_args("websocket.publishLocal", name, data, kind)
  return cpublish(name, data, op)
end

-- Subscribers of `name` in this worker.
function _M.subscribers(name)
  return cws.subscribers(channel(name, "websocket.subscribers(name)"))
end

---------------------------------------------------------------------------------------------------
-- the handshake

local function header(h, name)
  local v = h[name]
  if type(v) == "table" then return concat(v, ",") end
  return v
end

-- Does the comma-separated list hold `token` (case-insensitive)?
local function has_token(list, token)
  if not list then return false end
  for item in gmatch(list, "[^,]+") do
    if lower(match(item, "^%s*(.-)%s*$")) == token then return true end
  end
  return false
end

local function refuse(res, status, why, headers)
  headers = headers or {}
  headers["Content-Type"] = "text/plain"
  res:writeHead(status, headers)
  res:finish(why .. "\n")
  return nil, why
end

local units = { [""] = 1, k = 1024, m = 1024 * 1024, g = 1024 * 1024 * 1024 }

local function size_option(v)
  if v == nil then return DEFAULT_MAX_PAYLOAD end
  if type(v) == "string" then
    local n, unit = match(lower(v), "^%s*(%d+)%s*([kmg]?)b?%s*$")
    v = n and tonumber(n) * units[unit]
  end
  if type(v) ~= "number" or not (v >= 1 and v <= 2 ^ 52) then
    error("websocket.upgrade(): maxPayload must be a number of bytes or a string such as \"64k\" or \"1m\"", 3)
  end
  return v
end

local function ms_option(v, name)
  if v == nil or v == false or v == 0 then return nil end
  if type(v) ~= "number" or not (v >= 1 and v <= 2 ^ 31) then
    error("websocket.upgrade(): " .. name .. " must be a number of milliseconds", 3)
  end
  return v
end

-- The first of our protocols (in our order) that the client offered, or nil.
local function pick_protocol(ours, offered)
  if not ours or not offered then return nil end
  local theirs = {}
  for item in gmatch(offered, "[^,]+") do theirs[match(item, "^%s*(.-)%s*$")] = true end
  for i = 1, #ours do
    if theirs[ours[i]] then return ours[i] end
  end
end

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error("websocket.upgrade(req, res, opts): opts must be a table", 3) end
  if opts.protocols ~= nil and type(opts.protocols) ~= "table" then
    error("websocket.upgrade(): protocols must be an array of strings", 3)
  end
  return opts
end

-- Answers the upgrade request: the WebSocket, or nil, err after a 400 (426 for another version).
function _M.upgrade(req, res, opts)
  opts = check_opts(opts)
  local max = size_option(opts.maxPayload)
  local idle, ping = ms_option(opts.idleTimeout, "idleTimeout"), ms_option(opts.pingInterval, "pingInterval")
  if res.headersSent then error("websocket.upgrade(): the response has already started", 2) end
  local h = req.headers
  if require("moonfork").draining then return refuse(res, 503, "this worker is shutting down", { Connection = "close" }) end
  if req.method ~= "GET" then return refuse(res, 400, "a WebSocket upgrade must be a GET") end
  if not has_token(header(h, "upgrade"), "websocket") then return refuse(res, 400, "no 'Upgrade: websocket' header") end
  if not has_token(header(h, "connection"), "upgrade") then return refuse(res, 400, "no 'Connection: Upgrade' header") end
  if header(h, "sec-websocket-version") ~= "13" then
    return refuse(res, 426, "unsupported WebSocket version (13 is)", { ["Sec-WebSocket-Version"] = "13" })
  end
  local key = h["sec-websocket-key"]
  if type(key) ~= "string" or #key ~= 24 or not find(key, "^[%w+/]+==$") then
    return refuse(res, 400, "bad Sec-WebSocket-Key")
  end
  local proto = pick_protocol(opts.protocols, header(h, "sec-websocket-protocol"))
  local offer = opts.compress and header(h, "sec-websocket-extensions") or nil
  res.headersSent, res.finished, res.statusCode = true, true, 101
  local ws, err = accept(res._conn, gen_of(res._conn), key, proto, offer, max, idle, ping, header(h, "origin"))
  if not ws then return nil, err end
  if state(ws) then return nil, "closed" end
  return ws
end

---------------------------------------------------------------------------------------------------
-- events from C

local report_message, report_close, report_drain = reporters.message, reporters.close, reporters.drain

local function on_message(l, data, binary)
  local kind = binary and "binary" or "text"
  if type(l) == "function" then return spawn(l, report_message, data, kind) end
  for i = 1, #l do spawn(l[i], report_message, data, kind) end
end

local function on_close(l, code, reason)
  emit(l, report_close, code, reason)
end

local function on_drain(l)
  emit(l, report_drain)
end

if cws.on then
  -- runner, ran and failed: a listener that is a function runs in a runner (sched.runner) that C
  -- resumes itself (server/bind_ws.c, message_fast), without on_message and spawn
  local runner, failed = sched.runner, sched.runner_failed
  cws.on { message = on_message, close = on_close, drain = on_drain,
           runner = function() return runner(report_message) end, ran = sched.RAN, failed = failed }
  -- publishes from the other workers come over the mesh as envelopes (deliver: nil when not one)
  require("moonfork.mesh").internal(function(msg) return deliver(msg) ~= nil end)
end

_M.count = cws.count

return _M
