-- moonfork.websocket: upgrade(req, res, opts) turns a request into a WebSocket (RFC 6455, with
-- permessage-deflate, RFC 7692). The handshake's checks on the request are here; the 101, the frames,
-- the close handshake and compression are C's (server/bind_ws.c, ws_conn.c).
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local cws = package.loaded["moonfork.core.ws"] or {} -- absent in the master, which never serves

local type, tostring, tonumber, setmetatable, error, pairs, concat = type, tostring, tonumber, setmetatable,
  error, pairs, table.concat
local find, lower, match, gmatch = string.find, string.lower, string.match, string.gmatch
local accept, send, close, spawn, log = cws.accept, cws.send, cws.close, sched.spawn, core.log

local OP_TEXT, OP_BINARY, OP_PING = 1, 2, 9
local DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024

local _M = { _VERSION = "0.1.0" }

local WS = {}
WS.__index = WS

-- One error reporter per event, made once: listeners run in pooled coroutines (they may wait).
local reporters = {}
for _, event in pairs { "message", "close", "drain" } do
  reporters[event] = function(trace) log("error in websocket '" .. event .. "' callback: " .. trace) end
end

-- A listener is kept as the function itself while it is alone (the common case: no table), under
-- the key "_" .. event (keys made once: no string built per message).
local keys = { message = "_message", close = "_close", drain = "_drain" }

local function emit(ws, key, report, a, b)
  local l = ws[key]
  if l == nil then return end
  if type(l) == "function" then
    spawn(l, report, a, b)
  else
    for i = 1, #l do spawn(l[i], report, a, b) end
  end
end

function WS:on(event, fn)
  if not reporters[event] then error("ws:on(): unknown event '" .. tostring(event) .. "'", 2) end
  if type(fn) ~= "function" then error("ws:on(event, fn): fn must be a function", 2) end
  if event == "close" and self._code then -- already closed: now rather than never
    spawn(fn, reporters.close, self._code, self._reason)
    return self
  end
  local key = keys[event]
  local l = self[key]
  if l == nil then
    self[key] = fn
  elseif type(l) == "function" then
    self[key] = { l, fn }
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
  data = payload(data, "send")
  local op = OP_TEXT
  if kind == "binary" then
    op = OP_BINARY
  elseif kind ~= nil and kind ~= "text" then
    error("ws:send(data, kind): kind must be \"text\" or \"binary\"", 2)
  end
  if self._code then return nil, "closed" end
  return send(self._ud, data, op)
end

function WS:ping(data)
  data = data == nil and "" or payload(data, "ping")
  if #data > 125 then error("ws:ping(data): at most 125 bytes", 2) end
  if self._code then return nil, "closed" end
  return send(self._ud, data, OP_PING)
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
  if self._code then return end
  close(self._ud, code or 1000, reason)
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
  local ws = setmetatable({ protocol = proto, origin = header(h, "origin") }, WS)
  res.headersSent, res.finished, res.statusCode = true, true, 101
  local ud, compressed = accept(ws, res._conn, res._gen, key, proto, offer, max, idle, ping)
  if not ud then return nil, compressed end
  ws._ud = ud
  if compressed then ws.compressed = true end
  if ws._code then return nil, "closed" end
  return ws
end

---------------------------------------------------------------------------------------------------
-- events from C

local report_message, report_close, report_drain = reporters.message, reporters.close, reporters.drain

local function on_message(ws, data, binary)
  emit(ws, "_message", report_message, data, binary and "binary" or "text")
end

local function on_close(ws, code, reason)
  ws._code, ws._reason = code, reason
  emit(ws, "_close", report_close, code, reason)
  ws._message, ws._drain, ws._close = nil, nil, nil
end

local function on_drain(ws)
  emit(ws, "_drain", report_drain)
end

if cws.on then cws.on { message = on_message, close = on_close, drain = on_drain } end

_M.count = cws.count

return _M
