-- examples/proxy.lua: a reverse proxy in front of a list of HTTP upstreams.
--
-- Each request goes to the next upstream in turn (round robin, per worker), over a keep-alive pool of
-- connections per upstream (moonfork.http.request). The method, the headers and the body go on, minus
-- the hop-by-hop headers and with the client's address appended to X-Forwarded-For; the response comes
-- back as it arrives, and a slow client slows the upstream down instead of filling the worker's memory
-- (res:write returns false, res:drain waits, and meanwhile nothing more is read from the upstream). An
-- upstream that refuses, times out or breaks off answers 502, and is skipped for a few seconds (a
-- passive health check: no probes, the failures of real requests are the signal).
--
--   PROXY_UPSTREAMS=127.0.0.1:8081,127.0.0.1:8082 moonfork --workers 2 examples/proxy.lua
--
-- Environment (each optional): PROXY_UPSTREAMS (host:port, comma-separated; default the list below),
-- PROXY_PORT (8080; --port wins), PROXY_SKIP_MS (how long a failed upstream is skipped, 5000),
-- PROXY_TIMEOUT_MS (connect, send and read timeout towards an upstream, 10000), PROXY_POOL_SIZE
-- (idle keep-alive connections kept per upstream and worker, 64), PROXY_IDLE_MS (how long one may stay
-- idle, 60000; 0: until the upstream closes it), PROXY_MAX_BODY (the largest request body passed on,
-- 1g; --max-body wins).
--
-- PROXY_MODE: "c" (the default) relays each request in C with moonfork.http.pass; "lua" moves the
-- bytes in Lua with moonfork.http.request (the same behaviour, at about twice the CPU per request).
--
-- It is also a module: `require("proxy").handler{ upstreams = {...}, skipMs = ..., timeoutMs = ...,
-- poolSize = ..., idleMs = ..., mode = "c" | "lua" }` returns the handler, for a script that serves
-- other things beside it.
local moonfork = require "moonfork"

local type, tostring, tonumber, pairs, error, pcall, setmetatable, rawget =
  type, tostring, tonumber, pairs, error, pcall, setmetatable, rawget
local lower, find, gmatch, match = string.lower, string.find, string.gmatch, string.match
local now, request, pass = moonfork.now, moonfork.http.request, moonfork.http.pass

local DEFAULT_UPSTREAMS = { "127.0.0.1:8081", "127.0.0.1:8082" }

local _M = {}

-- Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, not the message, so they stop
-- here in both directions, together with any header a Connection header names.
local HOP = {
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true, trailer = true,
  ["transfer-encoding"] = true, upgrade = true, ["proxy-authenticate"] = true, ["proxy-authorization"] = true,
}

local function named_by_connection(value, out)
  if type(value) == "table" then
    for i = 1, #value do named_by_connection(value[i], out) end
    return out
  end
  for token in gmatch(value, "[^,%s]+") do
    out = out or {}
    out[lower(token)] = true
  end
  return out
end

-- Removes the hop-by-hop headers from h (lower-case names), in place; returns h.
local function strip_hop(h)
  local conn = h.connection
  local extra
  if conn and conn ~= "keep-alive" and conn ~= "close" then extra = named_by_connection(conn) end
  for name in pairs(h) do
    if HOP[name] or (extra and extra[name]) then h[name] = nil end
  end
  return h
end
_M.strip_hop = strip_hop

---------------------------------------------------------------------------------------------------
-- upstreams: round robin, skipping the ones that failed less than skipMs ago

local function parse_upstreams(list)
  if type(list) == "string" then
    local t = {}
    for item in gmatch(list, "[^,%s]+") do t[#t + 1] = item end
    list = t
  end
  if type(list) ~= "table" or #list == 0 then error("proxy: no upstreams (PROXY_UPSTREAMS=host:port,...)", 3) end
  local ups = {}
  for i = 1, #list do
    local item = list[i]
    local host, port = match(tostring(item), "^%[?([^%]]-)%]?:(%d+)$")
    port = tonumber(port)
    if not host or host == "" or not port or port < 1 or port > 65535 then
      error("proxy: bad upstream " .. tostring(item) .. " (expected host:port)", 3)
    end
    local hostport = find(host, ":", 1, true) and ("[" .. host .. "]:" .. port) or (host .. ":" .. port)
    ups[i] = { name = hostport, base = "http://" .. hostport, down_until = 0 }
  end
  return ups
end

-- The next upstream in turn that is not being skipped; when all are, the next one anyway (a request
-- is how a skipped upstream gets its chance back early when every other one is down too).
local function pick(pool)
  local ups, n = pool.ups, #pool.ups
  local t
  for _ = 1, n do
    local i = pool.next
    pool.next = i % n + 1
    local up = ups[i]
    local d = up.down_until -- 0 when it is not being skipped: no clock read on the common path
    if d == 0 then return up end
    t = t or now()
    if d <= t then
      up.down_until = 0
      return up
    end
  end
  local i = pool.next
  pool.next = i % n + 1
  return ups[i]
end

local function mark_down(pool, up, why)
  local first = up.down_until <= now()
  up.down_until = now() + pool.skip_ms
  if first then moonfork.log("proxy: upstream " .. up.name .. " failed (" .. tostring(why) .. "): skipped for "
    .. pool.skip_ms .. " ms") end
end

---------------------------------------------------------------------------------------------------
-- one request

local BAD_GATEWAY = { ["Content-Type"] = "text/plain", ["Content-Length"] = "16" }

local function bad_gateway(res)
  res:writeHead(502, BAD_GATEWAY)
  res:finish("502 Bad Gateway\n")
end

-- The request's headers for the upstream: hop-by-hop ones gone, X-Forwarded-For appended. (The
-- request's own table, changed in place: req.headers is built for each request.)
local function upstream_headers(req)
  local h = strip_hop(req.headers)
  h.expect = nil -- moonfork answered the client's "100-continue" itself; the body comes regardless
  local addr = req.remoteAddress
  if addr then
    local xff = h["x-forwarded-for"]
    if type(xff) == "table" then xff = table.concat(xff, ", ") end
    h["x-forwarded-for"] = xff and (xff .. ", " .. addr) or addr
  end
  return h
end

-- Raised through moonfork.http.request by the body reader when the client's body fails: the exchange
-- is abandoned (its connection closed, so the upstream never takes a short body for a whole one).
local CLIENT_BODY_FAILED = setmetatable({}, { __tostring = function() return "the client's body failed" end })

-- The request body: the string when it had all arrived before the handler started (the client may
-- then send it again on a fresh connection when a pooled one turns out closed, for an idempotent
-- method), else a function
-- giving it piece by piece as the client sends it, and its state: when it fails, `state.err` says why.
local function body_source(req, te, cl)
  if not te and (cl == nil or cl == "0") then return nil end
  local whole = rawget(req, "body") -- (a string only when complete: see moonfork.http's dispatcher)
  if type(whole) == "string" then return whole end
  local state = {}
  return function()
    local piece, err = req:read()
    if err then
      state.err = err
      error(CLIENT_BODY_FAILED, 0)
    end
    return piece
  end, state
end

-- Streams the upstream's body to the client: never reads more from the upstream while the client's
-- queue is full. Returns true, or nil, err when the upstream broke off (the client's connection is
-- then cut by the caller: a truncated body must not look complete).
local function relay(up_res, res, first)
  local piece = first
  while piece do
    local ok = res:write(piece)
    if ok == nil then -- the client left: drop the upstream connection (its body is unread)
      up_res:close()
      return true
    end
    if ok == false and not res:drain() then
      up_res:close()
      return true
    end
    local err
    piece, err = up_res:read()
    if not piece and err then return nil, err end
  end
  res:finish()
  return true
end

-- The request target to send on: origin-form ("/path?query") as it came, or the path of an
-- absolute-form one ("http://host/path"); nil for anything else ("*", authority-form).
local target_of = require("moonfork.http_pass").target_of

-- A client whose body failed is not the upstream's fault: it gets the answer that fits, if it is
-- still there to read it.
local CLIENT_FAILED = { ["too large"] = 413, timeout = 408 }
local REASON = { [400] = "400 Bad Request\n", [408] = "408 Request Timeout\n", [413] = "413 Content Too Large\n" }

local function client_error(res, status)
  res:writeHead(status, { ["Content-Type"] = "text/plain", ["Connection"] = "close" })
  res:finish(REASON[status])
end

-- Passes the upstream's response on; true when it went (or the client left), nil, err when the
-- upstream failed before anything was sent (the caller answers 502). A failure after that raises:
-- the handler's error closes the client's connection.
local function respond(pool, up, up_res, res)
  local first, err = up_res:read() -- the head goes out with the first piece: a failure before it is a 502
  local status = up_res.status
  if status < 200 or status > 599 then -- not a final status a response can carry on (moonfork's
    first, err = nil, "status " .. status -- own 1xx are its business): the upstream is broken
  end
  if not first and err then
    up_res:close()
    return nil, err
  end
  local rh = strip_hop(up_res.headers)
  rh.date = nil -- moonfork sends its own
  res:writeHead(status, rh)
  local cl = rh["content-length"]
  if first and cl and #first == tonumber(cl) then -- all of it: one write, and the connection is
    up_res:read()                                  -- back in its pool already (this read says nil)
    res:finish(first)
    return true
  end
  local ok, rerr = relay(up_res, res, first)
  if ok then return true end
  mark_down(pool, up, rerr)
  error("proxy: upstream " .. up.name .. " broke off mid-response (" .. tostring(rerr) .. ")", 0)
end

-- Whether a failure before the response counts against the upstream. A connection closed under a
-- request the client could not send again (not idempotent, or a body streaming in) may just be a
-- pooled one the upstream closed as it was taken: a 502 then, but no reason to skip the upstream.
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true, TRACE = true }

local function blame(err, method, body)
  if err ~= "closed" and err ~= "connection reset by peer" then return true end
  return IDEMPOTENT[method] and type(body) ~= "function"
end

-- The C relay (moonfork.http.pass): the request's bytes move in C; Lua picks the upstream and keeps
-- the health check. A failure before the response reached the client was answered by pass (502, or
-- what the client's own body deserved); one after it cut the client's connection.
local function serve_pass(pool, req, res)
  local up = pick(pool)
  local status, err, sent = pass(req, res, up.name, pool.pass_opts)
  if status or err == "client closed" or err == "bad request target" or find(err, "^client body:") then return end
  -- (blame takes a function for a body that was streaming in: it could not be sent again)
  if sent or blame(err, req.method, rawget(req, "_bs") and blame) then mark_down(pool, up, err) end
end

local function serve(pool, req, res)
  local target = target_of(req.url)
  if not target then return client_error(res, 400) end
  local up = pick(pool)
  local h = req.headers
  local body, state = body_source(req, h["transfer-encoding"], h["content-length"])
  local ok, up_res, err = pcall(request, up.base .. target, {
    method = req.method, headers = upstream_headers(req), body = body,
    stream = true, timeout = pool.timeout_ms, poolSize = pool.pool_size, idle = pool.idle_ms,
  })
  if not ok then
    if up_res ~= CLIENT_BODY_FAILED then error(up_res, 0) end
    return client_error(res, CLIENT_FAILED[state and state.err] or 400)
  end
  if up_res then
    local done
    done, ok, err = pcall(respond, pool, up, up_res, res)
    if not done then -- the client's body failed after the upstream had begun to answer (full duplex)
      if ok ~= CLIENT_BODY_FAILED then error(ok, 0) end
      up_res:close()
      if not res.headersSent then return client_error(res, CLIENT_FAILED[state.err] or 400) end
      error("proxy: the client's request body failed (" .. tostring(state.err) .. ") after the upstream's response had begun", 0)
    end
    if ok then return end
  end
  if blame(err, req.method, body) then mark_down(pool, up, err) end
  bad_gateway(res)
end

-- A setting: nil gives the default; anything but a number from min up is an error at start-up.
local function setting(v, name, default, min)
  if v == nil then return default end
  local n = tonumber(v)
  if not n or n < min or n ~= n then
    error("proxy: " .. name .. " must be a number from " .. min .. " up, not " .. tostring(v), 3)
  end
  return n
end

-- handler{ upstreams = { "host:port", ... } | "host:port,...", skipMs, timeoutMs, poolSize, idleMs }
function _M.handler(opts)
  opts = opts or {}
  local pool = {
    ups = parse_upstreams(opts.upstreams), next = 1,
    skip_ms = setting(opts.skipMs, "skipMs (PROXY_SKIP_MS)", 5000, 0),
    timeout_ms = setting(opts.timeoutMs, "timeoutMs (PROXY_TIMEOUT_MS)", 10000, 1),
    pool_size = setting(opts.poolSize, "poolSize (PROXY_POOL_SIZE)", 64, 1),
    idle_ms = setting(opts.idleMs, "idleMs (PROXY_IDLE_MS)", nil, 0),
  }
  if opts.mode == "lua" then return function(req, res) return serve(pool, req, res) end end
  if opts.mode ~= nil and opts.mode ~= "c" then error("proxy: mode must be \"c\" or \"lua\", not " .. tostring(opts.mode), 2) end
  pool.pass_opts = { timeout = pool.timeout_ms, poolSize = pool.pool_size, idle = pool.idle_ms or 60000 }
  return function(req, res) return serve_pass(pool, req, res) end
end

if ... ~= nil then return _M end -- required as a module: no server of its own

local function env(name) -- (set but empty counts as not set)
  local v = os.getenv(name)
  if v ~= "" then return v end
end
local handler = _M.handler {
  upstreams = env("PROXY_UPSTREAMS") or DEFAULT_UPSTREAMS,
  skipMs = env("PROXY_SKIP_MS"), timeoutMs = env("PROXY_TIMEOUT_MS"), poolSize = env("PROXY_POOL_SIZE"),
  idleMs = env("PROXY_IDLE_MS"), mode = env("PROXY_MODE"),
}
-- bodies are streamed through, never held whole: the upstream decides how large is too large
moonfork.listen({ port = tonumber(env("PROXY_PORT")) or 8080, maxBody = env("PROXY_MAX_BODY") or "1g" },
  moonfork.http.createServer(handler))
