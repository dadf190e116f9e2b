-- moonfork.http.pass(req, res, upstream[, opts]): the request passed to an upstream, relayed in C.
--
-- Lua chooses the upstream, C moves the bytes (server/http_pass.c): a keep-alive pool per upstream per
-- worker, the request head rebuilt from the parsed request (hop-by-hop headers gone, X-Forwarded-For
-- appended), the body and the response streamed with backpressure both ways. The calling coroutine
-- waits once. Returns status, nil, true when the response went through; nil, err, sent when it
-- failed: sent false means nothing reached the client, which got a 502 (or the 400/408/413 its own
-- body deserved, err "client body: ..."); sent true means the response had begun, and the client's
-- connection was cut (a truncated body must not look complete). A bodiless GET that asks for an
-- upgrade (WebSocket) asks the upstream too; its 101 makes the client's connection a tunnel to the
-- upstream, relayed in C from then on: pass returns 101, nil, true at once.
local sched = require "moonfork.sched"
local cpass = package.loaded["moonfork.core.pass"] or {}

local type, tostring, tonumber, pairs, error, setmetatable, rawget =
  type, tostring, tonumber, pairs, error, setmetatable, rawget
local match, find, byte, lower, sub = string.match, string.find, string.byte, string.lower, string.sub
local running, wait, wake = coroutine.running, sched.wait, sched.wake
local start = cpass.start

local _M = {}

if cpass.on then cpass.on(wake) end -- done(co, status, err, sent) wakes the waiting coroutine

-- A draining worker closes its tunnels (they would not outlive --grace) and opens no new one. This
-- module is loaded at the first pass: the drain may have begun already.
local moonfork = package.loaded.moonfork
if cpass.drain and type(moonfork) == "table" and moonfork.on then
  local drain = cpass.drain
  moonfork.on("drain", function() drain() end)
  if moonfork.draining then drain() end
end

local SLASH = byte("/")

-- upstream string -> { name, host, port, literal } (names are resolved at each use, from the socket
-- module's cache)
local upstreams = setmetatable({}, { __mode = "k" })

local function parse_upstream(s)
  local u = upstreams[s]
  if u then return u end
  if type(s) ~= "string" then error("moonfork.http.pass(): upstream must be a string (\"host:port\" or \"unix:/path\")", 3) end
  if sub(s, 1, 5) == "unix:" then
    if #s == 5 then error("moonfork.http.pass(): upstream " .. s .. " has no path", 3) end
    u = { name = s, host = s, literal = true, hostport = "localhost" }
  else
    local host, port = match(s, "^%[?([^%]]-)%]?:(%d+)$")
    port = tonumber(port)
    if not host or host == "" or not port or port < 1 or port > 65535 then
      error("moonfork.http.pass(): bad upstream " .. s .. " (expected host:port or unix:/path)", 3)
    end
    local lit = find(host, "^%d+%.%d+%.%d+%.%d+$") or find(host, ":", 1, true)
    u = { name = s, host = host, port = port, literal = lit and true, hostport = s }
  end
  upstreams[s] = u
  return u
end

-- opts table -> its settings, worked out once (an opts table is usually built once and reused)
local settings = setmetatable({}, { __mode = "k" })
local DEFAULTS = { pool = 64, idle = 60000, connect = 10000, send = 10000, read = 10000, xff = true, tunnel = 60000 }

local function ms(v, name, default)
  if v == nil then return default end
  local n = tonumber(v)
  if not n or n < 0 or n ~= n then error("moonfork.http.pass(): opts." .. name .. " must be a number from 0 up", 4) end
  return n
end

local function header_lines(h)
  if h == nil then return nil end
  if type(h) ~= "table" then error("moonfork.http.pass(): opts.headers must be a table", 4) end
  local out = ""
  for name, value in pairs(h) do
    if type(name) ~= "string" or not match(name, "^[%w!#$%%&'*+%-.^_`|~]+$") then
      error("moonfork.http.pass(): bad header name " .. tostring(name), 4)
    end
    value = tostring(value)
    if find(value, "[%z\1-\8\10-\31\127]") then error("moonfork.http.pass(): header " .. name .. ": control characters", 4) end
    out = out .. name .. ": " .. value .. "\r\n"
  end
  return out
end

local function drop_list(list)
  if list == nil then return nil end
  if type(list) ~= "table" then error("moonfork.http.pass(): opts.removeHeaders must be a list of names", 4) end
  local out = ""
  for i = 1, #list do out = out .. lower(tostring(list[i])) .. "," end
  return out
end

local function settings_of(opts)
  if opts == nil then return DEFAULTS end
  local s = settings[opts]
  if s then return s end
  if type(opts) ~= "table" then error("moonfork.http.pass(): opts must be a table", 3) end
  local t = ms(opts.timeout, "timeout", 10000)
  s = {
    pool = ms(opts.poolSize, "poolSize", 64), idle = ms(opts.idle, "idle", 60000),
    connect = ms(opts.connectTimeout, "connectTimeout", t), send = ms(opts.sendTimeout, "sendTimeout", t),
    read = ms(opts.readTimeout, "readTimeout", t), extra = header_lines(opts.headers),
    drop = drop_list(opts.removeHeaders), xff = opts.forwardedFor ~= false,
    max_body = opts.maxBody ~= nil and ms(opts.maxBody, "maxBody") or nil,
    tunnel = ms(opts.tunnelTimeout, "tunnelTimeout", 60000),
  }
  settings[opts] = s
  return s
end

-- The request target to send on: origin-form ("/path?query") as it came, or the path of an
-- absolute-form one ("http://host/path"); nil for anything else ("*", authority-form). Exported for
-- proxies that relay in Lua (examples/proxy.lua).
local function target_of(url)
  if byte(url, 1) == SLASH then return url end
  local path = match(url, "^[hH][tT][tT][pP][sS]?://[^/?#]*(.*)$")
  if not path then return nil end
  if path == "" or byte(path, 1) ~= SLASH then path = "/" .. path end
  return path
end
_M.target_of = target_of

local FAILURE_STATUS = { ["client body: too large"] = 413, ["client body: timeout"] = 408,
  ["client body: closed"] = 400, draining = 503 }
local REASON = { [400] = "400 Bad Request\n", [408] = "408 Request Timeout\n", [413] = "413 Content Too Large\n",
  [502] = "502 Bad Gateway\n", [503] = "503 Service Unavailable\n" }

local function answer(res, status)
  res:writeHead(status, { ["Content-Type"] = "text/plain", ["Content-Length"] = #REASON[status],
    ["Connection"] = status ~= 502 and "close" or nil })
  res:finish(REASON[status])
end

local resolve -- moonfork.socket's, loaded when a name (not an address) is first passed to

local function address_of(u, s)
  if u.literal then return u.host end
  resolve = resolve or require("moonfork.socket").resolve
  local addrs, err = resolve(u.host, s.connect > 0 and s.connect or nil)
  if not addrs then return nil, err end
  return addrs[1]
end

function _M.pass(req, res, upstream, opts)
  if type(req) ~= "table" or type(res) ~= "userdata" or not res._conn then
    error("moonfork.http.pass(req, res, upstream[, opts]): req and res of a request handler", 2)
  end
  if res.headersSent or res.finished then error("moonfork.http.pass(): the response has already begun", 2) end
  local u, s = parse_upstream(upstream), settings_of(opts)
  local target = target_of(req.url)
  if not target then
    answer(res, 400)
    return nil, "bad request target", false
  end
  local addr, err = address_of(u, s)
  local body = rawget(req, "body")
  if rawget(req, "_bs") then body = false end
  local ok
  if addr then
    ok, err = start(res._conn, nil, running(), req.method, target, req._head, body, u.name, addr, u.port, s.max_body,
      s.pool, s.idle, s.connect, s.send, s.read, s.extra, s.drop, s.xff, u.hostport, s.tunnel,
      req.httpVersion == "1.1")
  end
  local status, sent = nil, false
  if ok then status, err, sent = wait() end
  if not sent then
    if err == "client closed" then
      res.finished = true
      return nil, err, false
    end
    if not res.finished then answer(res, FAILURE_STATUS[err] or 502) end
    return nil, err, false
  end
  res.headersSent, res.finished = true, true
  _M.closed(res)
  return status, err, true
end

return _M
