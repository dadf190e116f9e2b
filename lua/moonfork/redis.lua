-- moonfork.redis: a Redis client shared by every request of a worker, its commands pipelined.
--
-- The C half (server/bind_redis.c over net_redis.c and redis_resp.c) connects, queues formatted
-- commands (all the commands of one loop turn leave in one write) and calls `reply` with each decoded
-- reply in order. Everything else is here: a connection keeps a FIFO of waiters, one per command sent,
-- so each reply goes to the coroutine that sent its command; a waiter that timed out leaves `false` in
-- its slot and its late reply is dropped. A client is made once at the script's top level; it connects
-- on first use in each worker (the master, which evaluates the script only for its options, never
-- does). One connection per client and worker carries every plain command; blocking commands get
-- connections of their own (kept in a small idle pool), and so does each subscription. When a
-- connection is lost its waiters fail at once, commands fail at once until a reconnection (with
-- backoff) succeeds, and subscriptions subscribe again and say so through opts.onReconnect.
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local cr = package.loaded["moonfork.core.redis"] -- absent in the master
local ctcp = package.loaded["moonfork.core.tcp"] or {}
if cr then require "moonfork.socket" end -- its resolver callback serves ours (ctcp.resolve)

local type, tostring, tonumber, select, pairs, pcall, error, setmetatable, unpack =
  type, tostring, tonumber, select, pairs, pcall, error, setmetatable, unpack
local upper, find, sub, match, format = string.upper, string.find, string.sub, string.match, string.format
local running, isyieldable = coroutine.running, coroutine.isyieldable
local wait, wake, spawn = sched.wait, sched.wake, sched.spawn
local now = core.now
local c_new, c_connect, c_send, c_close = cr and cr.new, cr and cr.connect, cr and cr.send, cr and cr.close

local _M = { _VERSION = "0.1" }

local DEFAULT_TIMEOUT = 5000         -- ms a command waits for its reply
local DEFAULT_CONNECT_TIMEOUT = 5000 -- ms a connection (with AUTH and SELECT) may take
local BACKOFF_MIN, BACKOFF_MAX = 100, 5000 -- ms between reconnection attempts, doubling
local BLOCK_POOL = 8                 -- idle connections kept for blocking commands, per client

local clients = setmetatable({}, { __mode = "k" }) -- every client of this worker
local closing = false                 -- the worker drains or exits: no more reconnections

---------------------------------------------------------------------------------------------------
-- connections: { ud, client, kind, q = { [i] = waiter | false }, head, tail, ready, closed }

-- Closes conn; every command still waiting gets nil, err (after the caller has updated its state).
local function conn_close(conn, err)
  if conn.closed then return end
  conn.closed, conn.ready = true, false
  c_close(conn.ud)
  local q = conn.q
  for i = conn.head + 1, conn.tail do
    local w = q[i]
    q[i] = nil
    if type(w) == "thread" then
      wake(w, nil, err)
    elseif w then
      w(err, true, true)
    end
  end
  conn.head = conn.tail
  if conn.cco then wake(conn.cco, nil, err) end
end

-- Sends one command on conn and waits up to ms (nil: no limit) for its reply: value | nil, err.
local function request(conn, ms, ...)
  local ok, sent, err = pcall(c_send, conn.ud, ...)
  if not ok then error("moonfork.redis: " .. tostring(sent), 3) end
  if not sent then return nil, "redis: " .. err end
  local i = conn.tail + 1
  conn.tail = i
  local co = running()
  conn.q[i] = co
  local v, e = wait(ms)
  if conn.q[i] == co then -- still waiting: the timeout fired
    conn.q[i] = false
    return nil, "redis: timeout"
  end
  if v == nil then return nil, e end
  return v
end

-- The addresses of host (a literal is its own): { addr... } | nil, err. Names go through
-- moonfork.socket's resolver callback (libuv's getaddrinfo, so /etc/hosts is honoured).
local function resolve(host, ms)
  if find(host, "^%d+%.%d+%.%d+%.%d+$") or find(host, ":", 1, true) then return { host } end
  local w = { co = running(), host = host }
  local ok, err = ctcp.resolve(host, w)
  local addrs
  if ok then addrs, err = wait(ms) end
  w.co = nil
  if addrs and addrs[1] then return addrs end
  return nil, "redis: " .. host .. " could not be resolved (" .. tostring(err or "no address") .. ")"
end

local function where(o)
  return o.path or (o.host .. ":" .. o.port)
end

-- The ms left until deadline (0 when past: a wait of 0 times out at once).
local function left(deadline)
  local ms = deadline - now()
  return ms > 0 and ms or 0
end

-- AUTH and SELECT on a new connection, within the deadline: true | nil, err.
local function handshake(conn, o, deadline)
  local ok, err = true, nil
  if o.password then
    if o.username then ok, err = request(conn, left(deadline), "AUTH", o.username, o.password)
    else ok, err = request(conn, left(deadline), "AUTH", o.password) end
    if not ok then return nil, "redis: AUTH failed: " .. sub(err, find(err, "^redis: ") and 8 or 1) end
  end
  if o.db then
    ok, err = request(conn, left(deadline), "SELECT", o.db)
    if not ok then return nil, "redis: SELECT failed: " .. sub(err, find(err, "^redis: ") and 8 or 1) end
  end
  return true
end

-- One connection attempt to addr (port nil: a Unix path) until deadline: conn | nil, err (closed).
local function attempt(client, kind, addr, port, deadline)
  local conn = { client = client, kind = kind, q = {}, head = 0, tail = 0, ready = false, closed = false }
  local ud, err = c_new(conn, port == nil)
  if not ud then return nil, "redis: " .. err end
  conn.ud = ud
  local ok
  ok, err = c_connect(ud, addr, port)
  if ok then
    conn.cco = running()
    ok, err = wait(left(deadline))
    conn.cco = nil
    if err == "timeout" then err = "redis: connect timeout" end
  else
    err = "redis: " .. err
  end
  if ok then return conn end
  conn_close(conn, err)
  return nil, err
end

-- A new connection of `client`, connected (to the first address of its host that does not refuse),
-- authenticated and on its db, all within connectTimeout: conn | nil, err.
local function dial(client, kind)
  local o = client.opts
  local deadline = now() + o.connectTimeout
  local conn, err
  if o.path then
    conn, err = attempt(client, kind, o.path, nil, deadline)
  else
    local addrs
    addrs, err = resolve(o.host, o.connectTimeout)
    for i = 1, addrs and #addrs or 0 do
      conn, err = attempt(client, kind, addrs[i], o.port, deadline)
      if conn or err ~= "redis: connection refused" then break end
    end
  end
  local ok = conn ~= nil
  if ok then ok, err = handshake(conn, o, deadline) end
  if not ok then
    if conn then conn_close(conn, err) end
    return nil, err .. " (" .. where(o) .. ")"
  end
  conn.ready = true
  return conn
end

---------------------------------------------------------------------------------------------------
-- the shared connection: lazy, reconnected with backoff

local reconnect

local function schedule(client)
  if closing or client.closed or client.retry then return end
  local ms = client.backoff
  client.backoff = ms * 2 > BACKOFF_MAX and BACKOFF_MAX or ms * 2
  client.retry = sched.timer(ms, 0, reconnect, 1, client)
end

-- Connects the shared connection (the caller waits; others join it): conn | nil, err.
local function connect_main(client)
  local pending = { joiners = {} }
  client.main = pending
  local conn, err = dial(client, "main")
  if client.main ~= pending then -- the client was closed meanwhile
    if conn then conn_close(conn, "redis: the client is closed") end
    conn, err = nil, "redis: the client is closed"
  end
  client.main = conn or false
  if conn then
    client.backoff, client.down = BACKOFF_MIN, false
  else
    client.down = err
    schedule(client)
  end
  for co in pairs(pending.joiners) do wake(co, conn, err) end
  return conn, err
end

function reconnect(client)
  client.retry = false
  if closing or client.closed or client.main then return end
  connect_main(client)
end

-- Raises at the caller's caller (the script) where a command could not wait for its reply.
local function check_wait()
  if not (running() and isyieldable()) then
    error("moonfork.redis: commands can only run in a request handler, a timer or another moonfork callback", 4)
  end
end

-- The shared connection, ready: conn | nil, err (at once while Redis is known to be down).
local function main_conn(client, ms)
  check_wait()
  local conn = client.main
  if conn then
    if conn.ready then return conn end
    local co = running()
    conn.joiners[co] = true -- a connection under way: wait for it
    local c, err = wait(ms)
    conn.joiners[co] = nil
    if c == nil and err == "timeout" then return nil, "redis: timeout (connecting)" end
    return c, err
  end
  if client.closed or closing then return nil, "redis: the client is closed" end
  if client.down then return nil, "redis: not connected, reconnecting; last error: " .. sub(client.down, 8) end
  return connect_main(client)
end

---------------------------------------------------------------------------------------------------
-- what comes back

local function sub_reply(conn, v, is_err) end -- defined with the subscriptions

local function lost(conn, err)
  local client = conn.client
  err = "redis: " .. err .. " (" .. where(client.opts) .. ")"
  if conn.kind == "main" and client.main == conn then
    client.main, client.down = false, err
    schedule(client)
  end
  conn_close(conn, err)
  if conn.kind == "sub" and conn.sub then conn.sub:_lost(err) end -- (none yet while it is being dialed)
end

if cr then
  cr.on {
    connected = function(conn, err)
      if conn.cco then wake(conn.cco, err == nil or nil, err and ("redis: " .. err)) end
    end,
    reply = function(conn, v, is_err)
      local i = conn.head + 1
      if i > conn.tail then
        if conn.kind == "sub" then return sub_reply(conn, v, is_err) end
        return lost(conn, "a reply nobody asked for")
      end
      conn.head = i
      local q = conn.q
      local w = q[i]
      q[i] = nil
      if type(w) == "thread" then
        if is_err then wake(w, nil, v) else wake(w, v) end
      elseif w then
        w(v, is_err)
      end
    end,
    lost = lost,
    drain = function() _M.close_all(false) end,
    exit = function() _M.close_all(true) end,
  }
end

---------------------------------------------------------------------------------------------------
-- commands

local Client = {}

-- Commands that cannot share the pipelined connection, and what to use instead.
local refused = {
  SUBSCRIBE = "use redis:subscribe(channel..., fn)", PSUBSCRIBE = "use redis:psubscribe(pattern..., fn)",
  UNSUBSCRIBE = "use sub:close()", PUNSUBSCRIBE = "use sub:close()", SSUBSCRIBE = "not supported",
  SELECT = "use the client's db option", AUTH = "use the client's password and username options",
  HELLO = "RESP3 is not supported", QUIT = "use redis:close()", RESET = "not supported",
  MONITOR = "not supported", WATCH = "not supported on a shared connection",
  UNWATCH = "not supported on a shared connection",
  MULTI = "send MULTI ... EXEC in one redis:pipeline(function(p) p:multi() ... p:exec() end)",
  EXEC = "send MULTI ... EXEC in one redis:pipeline", DISCARD = "send MULTI ... EXEC in one redis:pipeline",
}
local in_pipeline = { MULTI = true, EXEC = true, DISCARD = true }

-- Blocking commands: where their own timeout is, as a function of the arguments -> ms | nil (forever).
local function last_seconds(n, ...)
  local s = tonumber((select(n, ...)))
  if s == nil then return 0 end
  return s > 0 and s * 1000 or nil
end
local function first_seconds(_, t)
  local s = tonumber(t)
  if s == nil then return 0 end
  return s > 0 and s * 1000 or nil
end
local function block_option(n, ...)
  for i = 1, n - 1 do
    local a = select(i, ...)
    if type(a) == "string" and upper(a) == "BLOCK" then
      local ms = tonumber((select(i + 1, ...)))
      if ms == nil then return 0 end
      return ms > 0 and ms or nil
    end
  end
  return false -- not blocking after all
end
local blocking = {
  BLPOP = last_seconds, BRPOP = last_seconds, BRPOPLPUSH = last_seconds, BLMOVE = last_seconds,
  BZPOPMIN = last_seconds, BZPOPMAX = last_seconds, BLMPOP = first_seconds, BZMPOP = first_seconds,
  WAIT = function(n, ...) local ms = tonumber((select(n, ...))) return (ms and ms > 0) and ms or nil end,
  WAITAOF = function(n, ...) local ms = tonumber((select(n, ...))) return (ms and ms > 0) and ms or nil end,
  XREAD = block_option, XREADGROUP = block_option,
}

-- A blocking command on a connection of its own (from the client's idle pool, or a new one); a
-- timeout closes that connection, so Redis stops blocking for a client that went away.
local function call_blocking(self, block_ms, ...)
  check_wait()
  local pool = self.bpool
  local conn = pool[#pool]
  while conn and conn.closed do -- lost while idle
    pool[#pool] = nil
    conn = pool[#pool]
  end
  local err
  if conn then
    pool[#pool] = nil
  else
    conn, err = dial(self, "block")
    if not conn then return nil, err end
  end
  local ms = block_ms and (block_ms + self.opts.timeout) or nil
  local v, e = request(conn, ms, ...)
  if v == nil and e == "redis: timeout" then
    conn_close(conn, e)
  elseif not conn.closed then
    if #pool < BLOCK_POOL and not closing and not self.closed then pool[#pool + 1] = conn
    else conn_close(conn, "redis: closed") end
  end
  if v == nil then return nil, e end
  return v
end

-- redis:call(name, args...) -> reply | nil, err. A Redis error is nil, "ERR ..." as Redis sent it.
function Client:call(name, ...)
  if type(name) ~= "string" then error("redis:call(name, ...): name must be a string", 2) end
  local cmd = upper(name)
  local why = refused[cmd]
  if why then error("moonfork.redis: " .. cmd .. " is not allowed here: " .. why, 2) end
  local block = blocking[cmd]
  if block then
    local n = select("#", ...)
    local ms = block(n, ...)
    if ms ~= false then
      if ms ~= nil and ms == 0 then ms = nil end
      return call_blocking(self, ms, name, ...)
    end
  end
  local ms = self.opts.timeout
  local conn, err = main_conn(self, ms)
  if not conn then return nil, err end
  return request(conn, ms, name, ...)
end

setmetatable(Client, { __index = function(C, key)
  if type(key) ~= "string" or sub(key, 1, 1) == "_" then return nil end
  local cmd = upper(key)
  local fn
  if refused[cmd] or blocking[cmd] then
    fn = function(self, ...) return self:call(cmd, ...) end
  else
    fn = function(self, ...)
      local ms = self.opts.timeout
      local conn, err = main_conn(self, ms)
      if not conn then return nil, err end
      return request(conn, ms, cmd, ...)
    end
  end
  C[key] = fn
  return fn
end })
Client.__index = Client

---------------------------------------------------------------------------------------------------
-- pipelines

local Pipeline = {}
setmetatable(Pipeline, { __index = function(P, key)
  if type(key) ~= "string" then return nil end
  local cmd = upper(key)
  local fn = function(self, ...) return self:call(cmd, ...) end
  P[key] = fn
  return fn
end })
Pipeline.__index = Pipeline

function Pipeline:call(name, ...)
  if type(name) ~= "string" then error("p:call(name, ...): name must be a string", 2) end
  local cmd = upper(name)
  if (refused[cmd] and not in_pipeline[cmd]) or blocking[cmd] then
    error("moonfork.redis: " .. cmd .. " cannot be pipelined", 2)
  end
  local n = self.n + 1
  self.n = n
  self[n] = { n = select("#", ...) + 1, name, ... }
  return self
end

-- redis:pipeline(function(p) p:incr("a"); p:get("b") end) -> { reply... } | nil, err. The commands go
-- out together; each reply takes its place (nil -> moonfork.null, a Redis error -> { false, "ERR..." }).
function Client:pipeline(fn)
  if type(fn) ~= "function" then error("redis:pipeline(fn): fn must be a function", 2) end
  local p = setmetatable({ n = 0 }, Pipeline)
  fn(p)
  local n = p.n
  if n == 0 then return {} end
  local ms = self.opts.timeout
  local conn, err = main_conn(self, ms)
  if not conn then return nil, err end
  for i = 1, n do
    local cmd = p[i]
    local ok, sent, e = pcall(c_send, conn.ud, unpack(cmd, 1, cmd.n))
    if not ok then error("moonfork.redis: " .. tostring(sent), 2) end
    if not sent then return nil, "redis: " .. e end -- nothing of it was sent: the write is batched
  end
  local co, replies, got, dead = running(), {}, 0, false
  local function collect(v, is_err, gone)
    if dead then return end
    if gone then
      dead = true
      return wake(co, nil, v)
    end
    got = got + 1
    replies[got] = is_err and { false, v } or v
    if got == n then wake(co, replies) end
  end
  local q, t = conn.q, conn.tail
  for i = 1, n do q[t + i] = collect end
  conn.tail = t + n
  local r, e = wait(ms)
  if r == nil then
    dead = true
    return nil, e == "timeout" and "redis: timeout" or e
  end
  return r
end

---------------------------------------------------------------------------------------------------
-- subscriptions, clients

local subs = require "moonfork.redis_sub"
sub_reply = subs.reply
subs.init { dial = dial, conn_close = conn_close, lost = lost, backoff = { BACKOFF_MIN, BACKOFF_MAX },
  closing = function() return closing end }

function Client:subscribe(...)
  return subs.start(self, "SUBSCRIBE", ...)
end

function Client:psubscribe(...)
  return subs.start(self, "PSUBSCRIBE", ...)
end

-- redis:close(): this worker's connections of the client close; commands from here on fail.
function Client:close()
  self.closed = true
  if self.retry then sched.timer_stop(self.retry) self.retry = false end
  local main = self.main
  self.main = false
  if main and main.ud then conn_close(main, "redis: the client is closed") end
  for _, conn in pairs(self.bpool) do conn_close(conn, "redis: the client is closed") end
  self.bpool = {}
  for s in pairs(self.subs) do s:close() end
end

-- The worker drains (exit false: subscriptions and idle connections close, no more reconnections;
-- the shared connection serves the requests still running) or exits (exit true: everything closes).
function _M.close_all(exit)
  closing = true
  for client in pairs(clients) do
    if client.retry then sched.timer_stop(client.retry) client.retry = false end
    for s in pairs(client.subs) do s:close() end
    for _, conn in pairs(client.bpool) do conn_close(conn, "redis: closed") end
    client.bpool = {}
    if exit then client:close() end
  end
end

local function parse_url(url, o)
  local rest = match(url, "^redis://(.*)$")
  if not rest then error("moonfork.redis.client(): url must be redis://[user:password@]host[:port][/db]", 3) end
  local auth, hostport, db = match(rest, "^(.-)@?([^@/]*)/?(%d*)$")
  if find(rest, "@", 1, true) then
    auth, hostport = match(rest, "^(.*)@([^@/]*)")
    db = match(rest, "/(%d+)$") or ""
    local user, pass = match(auth, "^([^:]*):(.*)$")
    if user then o.username, o.password = user ~= "" and user or nil, pass else o.password = auth end
  end
  local host, port = match(hostport, "^%[(.+)%]:?(%d*)$")
  if not host then host, port = match(hostport, "^([^:]*):?(%d*)$") end
  o.host = host ~= "" and host or o.host
  o.port = tonumber(port) or o.port
  if db ~= "" then o.db = tonumber(db) end
end

local function check_ms(v, name, default)
  if v == nil then return default end
  if type(v) ~= "number" or not (v > 0 and v <= sched.MAX_MS) then
    error("moonfork.redis.client(): " .. name .. " must be a number of milliseconds", 3)
  end
  return v
end

-- moonfork.redis.client(opts) -> client. opts: host ("127.0.0.1"), port (6379), path (a Unix
-- socket), url ("redis://..."), password, username, db, connectTimeout, timeout (ms), onReconnect.
function _M.client(opts)
  if opts ~= nil and type(opts) ~= "table" then error("moonfork.redis.client(opts): opts must be a table", 2) end
  opts = opts or {}
  local o = { host = opts.host or "127.0.0.1", port = opts.port or 6379, path = opts.path,
    password = opts.password, username = opts.username, db = opts.db }
  if opts.url then parse_url(opts.url, o) end
  if type(o.host) ~= "string" then error("moonfork.redis.client(): host must be a string", 2) end
  o.port = tonumber(o.port)
  if not o.port or o.port < 1 or o.port > 65535 then error("moonfork.redis.client(): bad port", 2) end
  if o.path ~= nil and type(o.path) ~= "string" then error("moonfork.redis.client(): path must be a string", 2) end
  if o.db ~= nil and (type(o.db) ~= "number" or o.db < 0) then error("moonfork.redis.client(): db must be a number", 2) end
  if o.password ~= nil then o.password = tostring(o.password) end
  o.connectTimeout = check_ms(opts.connectTimeout, "connectTimeout", DEFAULT_CONNECT_TIMEOUT)
  o.timeout = check_ms(opts.timeout, "timeout", DEFAULT_TIMEOUT)
  if opts.onReconnect ~= nil and type(opts.onReconnect) ~= "function" then
    error("moonfork.redis.client(): onReconnect must be a function", 2)
  end
  o.onReconnect = opts.onReconnect
  -- (every field is set, false when empty: a missing one would read as a command method)
  local client = setmetatable({ opts = o, bpool = {}, subs = {}, backoff = BACKOFF_MIN, inert = not cr,
    main = false, retry = false, down = false, closed = false }, Client)
  clients[client] = true
  return client
end

return _M
