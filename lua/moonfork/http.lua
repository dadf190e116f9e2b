-- moonfork.http: the request and response objects handed to a handler, and createServer().
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local chttp = package.loaded["moonfork.core.http"] or {} -- absent in the master, which never serves

local type, tostring, tonumber, pairs, setmetatable, rawget, pcall, error =
  type, tostring, tonumber, pairs, setmetatable, rawget, pcall, error
local find, sub, lower, gsub, char, gmatch = string.find, string.sub, string.lower, string.gsub,
  string.char, string.gmatch
local abort, remote, body_read, log = chttp.abort, chttp.remote, chttp.read, core.log
local spawn, wait, notify, close_waits = sched.spawn, sched.wait, sched.notify, sched.close

local cjson -- loaded on first res:json()

local _M = { _VERSION = "0.1.0" }

---------------------------------------------------------------------------------------------------
-- req: method, url, path, query, headers, trailers, httpVersion, remoteAddress, body

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

-- A body still arriving when the handler starts (http_body.c) has a state `bs` = { conn, gen, req, mode
-- ("stream" for req:read(), "whole" for req.body; the first wins), ended }; its readers wait on it,
-- woken by the core's `body` callback (on_conn_body) or the connection's close.
local function body_wait(bs, whole)
  while true do
    local b, err = body_read(bs.conn, bs.gen, whole)
    if b ~= false then return b, err end
    local ok, werr = wait(nil, bs)
    if not ok then return nil, werr end
  end
end

-- req:read(): the next piece of the body as it arrives, nil at its end (and after), or nil, "closed" /
-- "timeout" / "too large". A body that was complete when the handler started comes as one piece.
local function req_read(req)
  local bs = rawget(req, "_bs")
  if not bs then
    if rawget(req, "_read") then return nil end
    req._read = true
    local body = rawget(req, "body")
    if body == "" then return nil end
    return body
  end
  if bs.mode == "whole" then error("req:read(): the body was already taken whole by req.body", 2) end
  bs.mode = "stream"
  return body_wait(bs, false)
end

-- req.body of a body still arriving: waits until it is complete.
local function whole_body(req, bs)
  if bs.mode == "stream" then error("req.body: the body is being read with req:read()", 3) end
  bs.mode = "whole"
  local body, err = body_wait(bs, true)
  if not body then error("req.body: the request body could not be read: " .. tostring(err or "closed"), 3) end
  req.body = body
  return body
end

-- headers, trailers, path, query and remoteAddress are worked out on first use; body too when it was
-- still arriving as the handler started.
local headers_of = chttp.headers
local Req = {}
Req.__index = function(req, key)
  if key == "read" then return req_read end
  if key == "body" then
    local bs = rawget(req, "_bs")
    return bs and whole_body(req, bs)
  end
  if key == "headers" then
    local h = headers_of(rawget(req, "_head"))
    req.headers = h
    return h
  end
  if key == "trailers" then -- kept apart from headers: a trailer never adds or changes a header
    local packed = rawget(req, "_trailers")
    local t = packed and headers_of(packed) or {}
    local bs = rawget(req, "_bs")
    if not bs or bs.ended then req.trailers = t end -- (a body still arriving may bring them later)
    return t
  end
  if key == "remoteAddress" then
    local addr = remote(rawget(req, "_conn"))
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
-- written). Which header wins is decided in C, not here: `_h` over `_user` (bind_res.c, head_build),
-- and Content-Length, Transfer-Encoding and Connection against the core's framing
-- (http_respond.c); getHeader only reads in that order. The C core also turns them into header
-- lines and checks them for CR/LF, so a typical response costs no string building in Lua.

-- A response is not a table: it is the connection's binding object itself, a userdata made in C for
-- one response (server/bind_res.c), so that an open stream a script keeps costs a 64-byte object.
-- headersSent, finished, statusCode and _full are in its payload; _conn is the res itself; writeHead's
-- table (_user) and whatever else is set (_h, _names, _on, _bs, fields of the script's own) live in
-- its environment table, made on first use. writeHead, write and finish are C functions; the other
-- methods are here and read the fields through res_get/res_set. When the response ends, the res lets
-- go of its connection (http_conn_request_done): it cannot reach a later request.
local Res = { writeHead = chttp.writeHead, write = chttp.write, finish = chttp.finish,
              subscribe = chttp.subscribe, unsubscribe = chttp.unsubscribe } -- (server/http_chan.c)
Res["end"] = Res.finish
local res_get = chttp.res_get
local ResMT = chttp.res_mt or {}
ResMT.__index = function(res, key)
  local m = Res[key]
  if m ~= nil then return m end
  return res_get(res, key)
end
ResMT.__newindex = chttp.res_set

local lower_of = setmetatable({}, { __mode = "k", __index = function(t, name)
  local l = lower(name)
  t[name] = l
  return l
end })

-- One error reporter per event name, made once: listeners run in pooled coroutines (they may sleep).
local listener_error = setmetatable({}, { __index = function(t, event)
  local function report(trace) log("error in res:on('" .. event .. "') callback: " .. trace) end
  t[event] = report
  return report
end })

-- Listeners (`_on`): a response's one "close" listener is kept as the function itself; otherwise a
-- table of event -> a function, or an array of them once an event has several. The common case (a
-- stream kept with one close listener, as the chat does) costs no tables.
local function emit(res, event)
  local on = res._on
  if not on then return end
  local list
  if type(on) == "function" then
    if event ~= "close" then return end
    list, res._on = on, nil -- it happens once
  else
    list = on[event]
    if not list then return end
    if event == "close" then on[event] = nil end
  end
  local report = listener_error[event]
  if type(list) == "function" then return spawn(list, report) end
  for i = 1, #list do spawn(list[i], report) end
end

-- The response is over (finished, failed, or its client left): "close" listeners and waiters.
local function closed(res)
  if res._on then emit(res, "close") end
  if res._bs then close_waits(res._bs) end
  local dw = res._full and res._dw -- only res:drain() waits on a response, and only when full
  if dw then close_waits(dw) end
end

-- writeHead's headers when the response has some already: writeHead's values win, as in Node.
local function merge(res, headers)
  for k, v in pairs(headers) do res:setHeader(k, v) end
end

local function check_name(name, fname)
  if type(name) ~= "string" then error("res:" .. fname .. "(): the header name must be a string", 3) end
  return lower_of[name]
end

function Res:setHeader(name, value)
  if self.headersSent then error("res:setHeader(): the headers were already sent", 2) end
  local key = check_name(name, "setHeader")
  local t = type(value)
  if t == "string" then
    if find(value, "[%z\1-\8\10-\31\127]") then
      error("res:setHeader(): the value of " .. name .. " must not contain control characters (CR, LF, NUL...)", 2)
    end
  elseif t ~= "number" and t ~= "table" then
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

-- Waits (in the calling coroutine) until the send queue is below half its high-water mark: true at
-- once when it is not full, nil, "closed" when the response is over or the client leaves meanwhile.
function Res:drain()
  if self.finished then return nil, "closed" end
  if not self._full then return true end
  local dw = self._dw -- what its waiters wait on (sched.wait's owner is a table; the res is a userdata)
  if not dw then
    dw = {}
    self._dw = dw
  end
  return wait(nil, dw)
end

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
  if event == "close" and self.finished then
    spawn(fn, listener_error.close) -- already over: run it now rather than never
    return self
  end
  local on = self._on
  if not on then
    if event == "close" then
      self._on = fn
      return self
    end
    on = {}
    self._on = on
  elseif type(on) == "function" then
    on = { close = on }
    self._on = on
  end
  local list = on[event]
  if not list then
    on[event] = fn
  elseif type(list) == "function" then
    on[event] = { list, fn }
  else
    list[#list + 1] = fn
  end
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
    abort(res._conn)
    closed(res)
  end
end

-- Builds the function the C core calls for each request with its res (made in C), which the core
-- hands to on_conn_drain, on_conn_body and on_conn_closed.
function _M.dispatcher(server)
  return function(res, gen, method, url, version, head, body, trailers)
    local req = setmetatable({
      method = method, url = url, httpVersion = version, _head = head, body = body, _conn = res,
      _trailers = trailers,
    }, Req)
    if body == false then -- still arriving: req.body and req:read() get it (http_body.c)
      req.body = nil
      local bs = { conn = res, gen = gen, req = req }
      req._bs, res._bs = bs, bs
    end
    spawn(server.handler, handler_error, req, res)
  end
end

-- The C core calls this when a response that was told to slow down may write again.
function _M.on_conn_drain(res)
  res._full = false
  local dw = res._dw
  if res._on then emit(res, "drain") end
  if dw then notify(dw, true) end
end

-- The C core calls this when a body still arriving has news for a reader (ended: it is complete,
-- with its trailers, packed as the headers are).
function _M.on_conn_body(res, ended, trailers)
  local bs = res._bs
  if not bs then return end
  if ended then
    bs.ended = true
    if trailers then
      rawset(bs.req, "_trailers", trailers)
      rawset(bs.req, "trailers", nil)
    end
  end
  notify(bs, true)
end

-- The C core calls this when the connection of a response in flight is gone.
function _M.on_conn_closed(res)
  if not res.finished then
    res.finished = true
    closed(res)
  end
end

if chttp.res_on then chttp.res_on { closed = closed, merge = merge } end

-- Registers the Lua half with the C core (moonfork.listen; once).
function _M.serve(server)
  chttp.on { request = _M.dispatcher(server), close = _M.on_conn_closed, drain = _M.on_conn_drain,
    body = _M.on_conn_body }
end

-- moonfork.http.pass(req, res, upstream[, opts]): the request relayed to an upstream in C
-- (lua/moonfork/http_pass.lua), loaded on first use.
function _M.pass(req, res, upstream, opts)
  local p = require "moonfork.http_pass"
  p.closed = closed
  _M.pass = p.pass
  return p.pass(req, res, upstream, opts)
end

-- moonfork.http.publish(name, data): data as body bytes to every response subscribed (res:subscribe)
-- to channel `name` in THIS worker; returns how many. Worker-local on purpose: a script that keeps a
-- log updates it and publishes in the same callback, so a stream that catches up from the log and then
-- subscribes neither misses nor repeats a message. Other workers: the script's (nodes:broadcast).
_M.publish = chttp.publish
_M.subscribers = chttp.subscribers -- (name): members in this worker

-- moonfork.http.request(url[, opts]): the HTTP client (lua/moonfork/http_client.lua), loaded on first use.
function _M.request(url, opts)
  return require("moonfork.http_client").request(url, opts)
end

return _M
