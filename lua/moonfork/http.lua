-- moonfork.http: the request and response objects handed to a handler, and createServer().
local core = require "moonfork.core"
local sched = require "moonfork.sched"

local type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, pcall, error =
  type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, pcall, error
local find, sub, lower, gsub, char, gmatch = string.find, string.sub, string.lower, string.gsub,
  string.char, string.gmatch
local send, abort, log = core.send, core.abort, core.log

local cjson -- loaded on first res:json()

local _M = { _VERSION = "0.1.0" }

---------------------------------------------------------------------------------------------------
-- req: method, url, path, query, headers, httpVersion, remoteAddress, body

local function hexchar(h) return char(tonumber(h, 16)) end

local function unescape(s, plus)
  if plus then s = gsub(s, "+", " ") end
  return (gsub(s, "%%(%x%x)", hexchar))
end
_M.unescape = unescape

-- Decodes "a=1&b=x%20y&a=2" into { a = { "1", "2" }, b = "x y" }.
local function parse_query(q)
  local t = {}
  for pair in gmatch(q, "[^&]+") do
    local eq = find(pair, "=", 1, true)
    local k, v
    if eq then
      k, v = unescape(sub(pair, 1, eq - 1), true), unescape(sub(pair, eq + 1), true)
    else
      k, v = unescape(pair, true), ""
    end
    local old = t[k]
    if old == nil then
      t[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      t[k] = { old, v }
    end
  end
  return t
end
_M.parse_query = parse_query

-- headers, path, query and remoteAddress are worked out on first use.
local headers_of = core.headers
local Req = {}
Req.__index = function(req, key)
  if key == "headers" then
    local h = headers_of(rawget(req, "_head"))
    req.headers = h
    return h
  end
  if key == "remoteAddress" then
    local addr = core.remote(rawget(req, "_conn"))
    req.remoteAddress = addr
    return addr
  end
  if key ~= "path" and key ~= "query" then return nil end
  local url = rawget(req, "url")
  local q = find(url, "?", 1, true)
  req.path = unescape(q and sub(url, 1, q - 1) or url, false)
  req.query = q and parse_query(sub(url, q + 1)) or {}
  return rawget(req, key)
end

---------------------------------------------------------------------------------------------------
-- res
--
-- Headers stay as the handler gave them: writeHead's table is kept as it is (`_user`), setHeader
-- fills `_h` (lower-case name -> value, false once removed) and `_names` (lower-case -> the name as
-- written). Which header wins is decided in C, not here: `_h` over `_user` (lua_http.c, head_build),
-- and Content-Length, Transfer-Encoding and Connection against the core's framing
-- (http_respond.c); getHeader only reads in that order. The C core also turns them into header
-- lines and checks them for CR/LF, so a typical response costs no string building in Lua.

local Res = {}
Res.__index = Res

local active = {} -- connection -> the response it is carrying (removed when it ends)

local lower_of = setmetatable({}, { __mode = "k", __index = function(t, name)
  local l = lower(name)
  t[name] = l
  return l
end })

local function emit(res, event, ...)
  local list = res._on and res._on[event]
  if not list then return end
  if event == "close" then res._on[event] = nil end -- it happens once
  for _, fn in ipairs(list) do
    local ok, err = pcall(fn, ...)
    if not ok then log("error in res:on('" .. event .. "') callback: " .. tostring(err)) end
  end
end

local function closed(res)
  if active[res._conn] == res then active[res._conn] = nil end
  if res._on then emit(res, "close") end
end

local function check_name(name, fname)
  if type(name) ~= "string" then error("res:" .. fname .. "(): the header name must be a string", 3) end
  return lower_of[name]
end

function Res:setHeader(name, value)
  if self.headersSent then error("res:setHeader(): the headers were already sent", 2) end
  local key = check_name(name, "setHeader")
  local t = type(value)
  if t ~= "string" and t ~= "number" and t ~= "table" then
    error("res:setHeader(): the value must be a string, a number or an array of them", 2)
  end
  local h = self._h
  if not h then
    h = {}
    self._h, self._names = h, {}
  end
  h[key] = value
  self._names[key] = name
  return self
end

function Res:getHeader(name)
  local key = check_name(name, "getHeader")
  local h = self._h
  if h and h[key] ~= nil then return h[key] or nil end
  local user = self._user
  if user then
    for k, v in pairs(user) do
      if lower_of[k] == key then return v end
    end
  end
end

function Res:removeHeader(name)
  if self.headersSent then error("res:removeHeader(): the headers were already sent", 2) end
  local key = check_name(name, "removeHeader")
  if not self._h then self._h, self._names = {}, {} end
  self._h[key] = false -- hides writeHead's entry too, without touching the caller's table
end

function Res:writeHead(status, headers)
  if self.headersSent then error("res:writeHead(): the headers were already sent", 2) end
  if type(status) ~= "number" or status < 100 or status > 999 or status % 1 ~= 0 then
    status = tonumber(status)
    if not status or status < 100 or status > 999 or status % 1 ~= 0 then
      error("res:writeHead(): status must be a number from 100 to 999", 2)
    end
  end
  self.statusCode = status
  if headers ~= nil then
    if type(headers) ~= "table" then error("res:writeHead(): headers must be a table", 2) end
    if self._user or self._h then -- merge: writeHead's values win, as in Node
      for k, v in pairs(headers) do self:setHeader(k, v) end
    else
      self._user = headers
    end
  end
  return self
end

local function out(self, chunk, final)
  if self.headersSent then
    return send(self._conn, self._gen, 0, nil, nil, nil, chunk, final)
  end
  self.headersSent = true
  return send(self._conn, self._gen, self.statusCode, self._user, self._h, self._names, chunk, final)
end

local function body_string(chunk, fname)
  if chunk == nil then return "" end
  local t = type(chunk)
  if t == "string" then return chunk end
  if t == "number" then return tostring(chunk) end
  error("res:" .. fname .. "(): the body must be a string", 3)
end

-- Sends a piece of the body. Returns true, false when the client is slow (queue over its high-water
-- mark; wait for "drain"), or nil when the client is gone.
function Res:write(chunk)
  if self.finished then return nil end
  chunk = body_string(chunk, "write")
  local r = out(self, chunk, false)
  if r == nil then
    self.finished = true
    closed(self)
  end
  return r
end

function Res:finish(chunk)
  if self.finished then return nil end
  chunk = body_string(chunk, "finish")
  self.finished = true
  local r = out(self, chunk, true)
  closed(self)
  return r ~= nil
end
Res["end"] = Res.finish

local json_headers = { ["Content-Type"] = "application/json" }

function Res:json(value, status)
  cjson = cjson or require "cjson"
  local ok, body = pcall(cjson.encode, value)
  if not ok then error("res:json(): " .. tostring(body), 2) end
  if status then self:writeHead(status) end
  if not self._user and not self._h then
    self._user = json_headers -- never changed: setHeader writes to _h
  elseif self:getHeader("content-type") == nil then
    self:setHeader("Content-Type", "application/json")
  end
  return self:finish(body)
end

function Res:on(event, fn)
  if type(fn) ~= "function" then error("res:on(event, fn): fn must be a function", 2) end
  if event == "close" and self.finished and active[self._conn] ~= self then
    -- already over: run it now rather than never
    local ok, err = pcall(fn)
    if not ok then log("error in res:on('close') callback: " .. tostring(err)) end
    return self
  end
  local on = self._on or {}
  self._on = on
  local list = on[event] or {}
  on[event] = list
  list[#list + 1] = fn
  return self
end

---------------------------------------------------------------------------------------------------
-- the server

local Server = {}
Server.__index = Server

function _M.createServer(handler)
  if handler ~= nil and type(handler) ~= "function" then
    error("http.createServer(handler): handler must be a function", 2)
  end
  return setmetatable({ handler = handler }, Server)
end

function Server:on(event, fn)
  if event ~= "request" or type(fn) ~= "function" then
    error("server:on(): only the 'request' event, with a function, is supported", 2)
  end
  self.handler = fn
  return self
end

local function handler_error(trace, req, res)
  log("error in handler for " .. req.method .. " " .. req.url .. ": " .. trace)
  if not res.finished then
    res.finished = true
    abort(res._conn, res._gen)
    closed(res)
  end
end

-- Builds the function the C core calls for each request.
function _M.dispatcher(server)
  local spawn = sched.spawn
  return function(conn, gen, method, url, version, head, body)
    local req = setmetatable({
      method = method, url = url, httpVersion = version, _head = head, body = body, _conn = conn,
    }, Req)
    -- every field a response sets is there from the start: adding keys later would resize the table
    local res = setmetatable({ _conn = conn, _gen = gen, statusCode = 200, headersSent = false, finished = false }, Res)
    active[conn] = res
    spawn(server.handler, handler_error, req, res)
  end
end

-- The C core calls this when a response that was told to slow down may write again.
function _M.on_conn_drain(conn)
  local res = active[conn]
  if res then emit(res, "drain") end
end

-- The C core calls this when a connection that carried requests is gone.
function _M.on_conn_closed(conn)
  local res = active[conn]
  if res then
    active[conn] = nil
    if not res.finished then
      res.finished = true
      emit(res, "close")
    end
  end
end

return _M
