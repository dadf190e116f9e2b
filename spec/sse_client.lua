-- spec/sse_client.lua: Server-Sent Events readers and a JSON poster over luasocket, for the chat's
-- specs. A reader holds GET /events open, parses "id:"/"data:" events out of the (chunked or plain)
-- body, and, when its connection ends, reconnects by itself with Last-Event-ID: the last id it got,
-- as a browser does. All readers are stepped together by one select() loop (pump), polled until a
-- condition holds, never slept for.
--
--   local sse = require "spec.sse_client"
--   local a = sse.open("127.0.0.1", port, { since = "0" })   -- a.events: { {id=, data=}... }
--   sse.pump({ a, b }, function() return #a.events >= 3 end, 20)
--   local status, body = sse.post("127.0.0.1", port, { user = "u", text = "t", key = "k1" })
local socket = require "socket"
local cjson = require "cjson"
local helpers = require "spec.helpers"

local M = {}

local function connect(r)
  local c = socket.tcp()
  c:settimeout(5)
  local ok, err = c:connect(r.host, r.port)
  if not ok then
    c:close()
    return nil, err
  end
  local path = "/events"
  local hdr = ""
  if r.last then hdr = "Last-Event-ID: " .. r.last .. "\r\n"
  elseif r.since then path = path .. "?since=" .. r.since end
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: chat\r\nAccept: text/event-stream\r\n" .. hdr .. "\r\n")
  c:settimeout(0)
  r.sock, r.buf, r.head, r.chunked, r.body = c, "", true, false, ""
  r.connects = r.connects + 1
  return true
end

-- Opens a reader. opts: since (the first request's ?since=), reconnect (default true).
function M.open(host, port, opts)
  opts = opts or {}
  local r = { host = host, port = port, since = opts.since, events = {}, connects = 0,
    reconnect = opts.reconnect ~= false, statuses = {} }
  assert(connect(r))
  return r
end

local function parse_events(r)
  while true do
    local s, e = r.body:find("\r?\n\r?\n")
    if not s then return end
    local block = r.body:sub(1, s - 1)
    r.body = r.body:sub(e + 1)
    local ev = {}
    for line in (block .. "\n"):gmatch("([^\r\n]*)\r?\n") do
      local k, v = line:match("^(%w+): ?(.*)$")
      if k == "id" then ev.id = v elseif k == "data" then ev.data = (ev.data and ev.data .. "\n" or "") .. v end
    end
    if ev.data then
      r.events[#r.events + 1] = ev
      if ev.id then r.last = ev.id end
    end
  end
end

-- de-chunks what is buffered into r.body
local function dechunk(r)
  while true do
    local s, e, size = r.buf:find("^(%x+)[^\r\n]*\r\n")
    if not s then return end
    local n = tonumber(size, 16)
    if n == 0 then r.ended = true return end
    if #r.buf < e + n + 2 then return end
    r.body = r.body .. r.buf:sub(e + 1, e + n)
    r.buf = r.buf:sub(e + n + 3)
  end
end

local function feed(r, data)
  r.buf = r.buf .. data
  if r.head then
    local s, e = r.buf:find("\r\n\r\n", 1, true)
    if not s then return end
    local head = r.buf:sub(1, s - 1)
    r.buf = r.buf:sub(e + 1)
    r.head = false
    r.statuses[#r.statuses + 1] = tonumber(head:match("^HTTP/1%.%d (%d+)"))
    r.chunked = head:lower():find("transfer%-encoding: *chunked") ~= nil
  end
  if r.chunked then dechunk(r) else r.body, r.buf = r.body .. r.buf, "" end
  parse_events(r)
end

local function closed(r)
  r.sock:close()
  r.sock = nil
  r.drops = (r.drops or 0) + 1
end

-- Reads what each reader's socket has; reconnects the readers whose connection ended.
local function step(readers, wait)
  local socks, by = {}, {}
  for _, r in ipairs(readers) do
    if not r.sock and r.reconnect then connect(r) end
    if r.sock then
      socks[#socks + 1] = r.sock
      by[r.sock] = r
    end
  end
  local ready = socket.select(socks, nil, wait)
  for _, s in ipairs(ready) do
    local r = by[s]
    local data, err, part = s:receive(65536)
    data = data or part
    if data and #data > 0 then feed(r, data) end
    if err == "closed" or r.ended then closed(r) end
  end
end

-- Steps the readers until cond() is true or `timeout` seconds pass: cond()'s last value.
function M.pump(readers, cond, timeout)
  local deadline = helpers.now() + (timeout or helpers.DEADLINE)
  while true do
    local v = cond()
    if v or helpers.now() > deadline then return v end
    step(readers, 0.05)
  end
end

function M.close(r)
  r.reconnect = false
  if r.sock then r.sock:close() r.sock = nil end
end

-- The events' ids, in the order received.
function M.ids(r)
  local out = {}
  for i, ev in ipairs(r.events) do out[i] = ev.id end
  return out
end

-- One request with a JSON body (or none); returns status, the decoded body (or the raw one), raw.
function M.request(host, port, method, path, body)
  local c = socket.tcp()
  c:settimeout(15)
  local ok, err = c:connect(host, port)
  if not ok then
    c:close()
    return nil, err
  end
  local payload = body and cjson.encode(body) or ""
  c:send(method .. " " .. path .. " HTTP/1.1\r\nHost: chat\r\nConnection: close\r\nContent-Type: application/json\r\n" ..
    "Content-Length: " .. #payload .. "\r\n\r\n" .. payload)
  local resp = c:receive("*a") or ""
  c:close()
  local status = tonumber(resp:match("^HTTP/1%.%d (%d+)"))
  local head, raw = resp:match("^(.-)\r\n\r\n(.*)$")
  if head and head:lower():find("transfer%-encoding: *chunked") then
    local r = { buf = raw, body = "" }
    dechunk(r)
    raw = r.body
  end
  local okj, decoded = pcall(cjson.decode, raw or "")
  return status, okj and decoded or raw, raw
end

function M.post(host, port, msg)
  return M.request(host, port, "POST", "/messages", msg)
end

-- A stream id "ms-seq" as two numbers, for ordering.
function M.split(id)
  local ms, seq = tostring(id):match("^(%d+)%-(%d+)$")
  return tonumber(ms), tonumber(seq)
end

-- true when the ids strictly increase
function M.ascending(ids)
  for i = 2, #ids do
    local am, as = M.split(ids[i - 1])
    local bm, bs = M.split(ids[i])
    if not (bm > am or (bm == am and bs > as)) then return false, i end
  end
  return true
end

return M
