-- moonfork.http: the request and response objects handed to a handler, and createServer().
local core = require "moonfork.core"
local sched = require "moonfork.sched"

local type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, pcall, error =
  type, tostring, tonumber, pairs, ipairs, setmetatable, rawget, pcall, error
local find, sub, lower, gsub, char, gmatch, byte = string.find, string.sub, string.lower, string.gsub,
  string.char, string.gmatch, string.byte
local concat = table.concat
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

-- path and query are worked out on first use.
local Req = {}
Req.__index = function(req, key)
  if key ~= "path" and key ~= "query" then return nil end
  local url = rawget(req, "url")
  local q = find(url, "?", 1, true)
  req.path = unescape(q and sub(url, 1, q - 1) or url, false)
  req.query = q and parse_query(sub(url, q + 1)) or {}
  return rawget(req, key)
end

---------------------------------------------------------------------------------------------------
-- res

local Res = {}
Res.__index = Res

local active = setmetatable({}, { __mode = "k" }) -- connection -> the response it is carrying

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
  emit(res, "close")
end

local function check_token(v, what)
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" then error(what .. " must be a string", 3) end
  if find(v, "[\r\n]") then error(what .. " must not contain CR or LF", 3) end
  return v
end

function Res:setHeader(name, value)
  if self.headersSent then error("res:setHeader(): the headers were already sent", 2) end
  name = check_token(name, "header name")
  if type(value) == "table" then
    local vs = {}
    for i, v in ipairs(value) do vs[i] = check_token(v, "header value") end
    value = vs
  else
    value = check_token(value, "header value")
  end
  local key = lower(name)
  local h = self._headers
  if not h[key] then
    local order = self._order
    order[#order + 1] = key
  end
  h[key] = { name, value }
  return self
end

function Res:getHeader(name)
  local h = self._headers[lower(name)]
  return h and h[2]
end

function Res:removeHeader(name)
  if self.headersSent then error("res:removeHeader(): the headers were already sent", 2) end
  self._headers[lower(name)] = nil
end

function Res:writeHead(status, headers)
  if self.headersSent then error("res:writeHead(): the headers were already sent", 2) end
  status = tonumber(status)
  if not status or status < 100 or status > 999 or status % 1 ~= 0 then
    error("res:writeHead(): status must be a number from 100 to 999", 2)
  end
  self.statusCode = status
  if headers then
    for k, v in pairs(headers) do self:setHeader(k, v) end
  end
  return self
end

-- Hands the head (first time) and a body piece to the C core.
local function out(self, chunk, final)
  local head, clen, flags = nil, -1, 0
  if not self.headersSent then
    local parts, n = {}, 0
    local h = self._headers
    for _, key in ipairs(self._order) do
      local e = h[key]
      if e then
        if key == "content-length" then
          clen = tonumber(e[2]) or -1
        elseif key == "connection" and lower(e[2]) == "close" then
          flags = 1
        end
        if key ~= "transfer-encoding" and key ~= "connection" then
          local v = e[2]
          if type(v) == "table" then
            for _, one in ipairs(v) do
              n = n + 1
              parts[n] = e[1] .. ": " .. one .. "\r\n"
            end
          else
            n = n + 1
            parts[n] = e[1] .. ": " .. v .. "\r\n"
          end
        end
      end
    end
    head = concat(parts)
    self.headersSent = true
  end
  return send(self._conn, self._gen, self.statusCode, head, chunk, final, clen, flags)
end

local function body_string(chunk, fname)
  if chunk == nil then return "" end
  if type(chunk) == "number" then return tostring(chunk) end
  if type(chunk) ~= "string" then error("res:" .. fname .. "(): the body must be a string", 3) end
  return chunk
end

-- Sends a piece of the body. Returns true, false when the client is slow (queue over its high-water
-- mark), or nil when the client is gone.
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

function Res:json(value, status)
  cjson = cjson or require "cjson"
  local ok, body = pcall(cjson.encode, value)
  if not ok then error("res:json(): " .. tostring(body), 2) end
  if status then self:writeHead(status) end
  if not self._headers["content-type"] then self:setHeader("Content-Type", "application/json") end
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

-- Builds the function the C core calls for each request.
function _M.dispatcher(server)
  local function run(handler, req, res)
    handler(req, res)
  end
  return function(conn, gen, method, url, version, headers, body, remote)
    local handler = server.handler
    local req = setmetatable({
      method = method, url = url, httpVersion = version, headers = headers, body = body,
      remoteAddress = remote,
    }, Req)
    local res = setmetatable({
      _conn = conn, _gen = gen, _headers = {}, _order = {}, statusCode = 200,
      headersSent = false, finished = false,
    }, Res)
    active[conn] = res
    sched.spawn(run, function(err)
      log("error in handler for " .. method .. " " .. url .. ": " .. err)
      if not res.finished then
        res.finished = true
        abort(conn, gen)
        closed(res)
      end
    end, handler, req, res)
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
