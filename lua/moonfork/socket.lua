-- moonfork.socket: outbound TCP and Unix-domain sockets, OpenResty's cosocket API method for method.
--
-- The C half (server/bind_tcp.c) connects, reads, writes and closes, and reports each event to one
-- callback here with the connection it belongs to. Everything else is Lua: the receive patterns over
-- a buffer, timeouts (every wait is a sched.wait with the connection as owner, so closing it wakes
-- its waiters with "closed"), the resolver cache, the per-worker keep-alive pools.
--
-- A socket object (what scripts hold) and a connection (what C calls back with) are two tables: the
-- connection goes into a pool on setkeepalive and comes out for another socket object, while the old
-- object answers "closed". A connection belongs to the callback that connected it (a handler, a
-- timer, a listener): when that callback returns, a connection neither closed nor pooled is closed.
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local ctcp = package.loaded["moonfork.core.tcp"] or {}

local type, tonumber, tostring, setmetatable, error, pairs = type, tonumber, tostring, setmetatable, error, pairs
local find, sub, gsub, byte = string.find, string.sub, string.gsub, string.byte
local U = byte("u")
local remove = table.remove
local running = coroutine.running
local wait, wake, sclose, adopt, disown = sched.wait, sched.wake, sched.close, sched.adopt, sched.disown
local after, cancel = sched.after, sched.cancel
local tcp_new, tcp_connect, tcp_read, tcp_send, tcp_close, tcp_keep_loop, tcp_resolve, tcp_alive, tcp_tls =
  ctcp.new, ctcp.connect, ctcp.read, ctcp.send, ctcp.close, ctcp.keep_loop, ctcp.resolve, ctcp.alive, ctcp.tls

local _M = { _VERSION = "0.1" }

local DEFAULT_TIMEOUT = 60000    -- ms, for connect, send and read, as OpenResty's defaults
local DEFAULT_IDLE = 60000       -- ms a pooled connection may stay idle
local DEFAULT_POOL_SIZE = 30
local READ_HIGH = 1024 * 1024    -- buffered bytes past which reading pauses until someone receives
_M.resolver_ttl = ctcp.resolver_ttl or 5000 -- ms: listen{ resolverTtl = seconds } / --resolver-ttl

local Socket = {}
Socket.__index = Socket

---------------------------------------------------------------------------------------------------
-- connections

local pools = {}   -- name -> { idle = {conn...} (least recently used first), size, count, queue = {w...} }
local closing = false -- the worker drains or exits: nothing goes into a pool any more

local function pool_get(name, size)
  local p = pools[name]
  if not p then
    -- sized: a size was given (connect's pool_size, or the first setkeepalive's); later ones are
    -- ignored, as in OpenResty, where a pool's size is fixed when it is made
    p = { idle = {}, size = size or DEFAULT_POOL_SIZE, sized = size ~= nil, count = 0, queue = {} }
    pools[name] = p
  end
  return p
end

-- A connection of pool p was released (closed, or put back idle): the first queued connect goes on.
local function pool_next(p)
  local w = remove(p.queue, 1)
  if w then wake(w.co, true) end
end

local function idle_remove(p, conn)
  local idle = p.idle
  for i = 1, #idle do
    if idle[i] == conn then
      remove(idle, i)
      return
    end
  end
end

local function conn_close(conn)
  if conn.closed then return end
  conn.closed = true
  tcp_close(conn.ud)
  disown(conn, conn.root)
  if conn.timer then cancel(conn.timer, conn) end
  local p = conn.pool
  if p then
    if conn.pooled then idle_remove(p, conn) end
    p.count = p.count - 1
    pool_next(p)
  end
  sclose(conn)
end

-- The connection a callback leaves open is closed (sched.adopt).
local function conn_orphaned(conn)
  if not conn.pooled then conn_close(conn) end
end

local function new_conn(is_unix)
  local conn = { buf = "", closed = false, reused = 0 }
  local ud, err = tcp_new(conn, is_unix)
  if not ud then return nil, err end
  conn.ud = ud
  return conn
end

-- Waits on conn for the event `field` names ("rco" data, "wco" sent, "cco" connected) up to ms.
local function wait_on(conn, field, ms)
  conn[field] = running()
  local a, b = wait(ms, conn)
  conn[field] = nil
  return a, b
end

local function timeout_of(ms)
  if ms == nil or ms <= 0 then return DEFAULT_TIMEOUT end
  return ms
end

ctcp.on {
  connected = function(conn, err)
    local co = conn.cco
    if co then wake(co, err == nil or nil, err) end
  end,
  data = function(conn, chunk, err)
    if conn.pooled then return conn_close(conn) end -- the peer closed, or spoke out of turn
    if chunk then
      local buf = conn.buf
      if buf == "" then conn.buf = chunk else conn.buf = buf .. chunk end
      if #conn.buf > READ_HIGH and not conn.rco then
        tcp_read(conn.ud, false)
        conn.reading = false
      end
    else
      conn.eof, conn.reading = err, false
      if conn.hco then wake(conn.hco, nil, err) end
    end
    local co = conn.rco
    if co then wake(co, true) end
  end,
  sent = function(conn, err)
    local co = conn.wco
    if co then wake(co, err == nil or nil, err) end
  end,
  handshake = function(conn, err)
    local co = conn.hco
    if co then wake(co, err == nil or nil, err) end
  end,
  resolved = function(w, addrs, err)
    if addrs and #addrs > 0 then _M.cache[w.host] = { addrs = addrs, expires = core.now() + _M.resolver_ttl } end
    if w.co then wake(w.co, addrs, err) end
  end,
  drain = function() _M.close_pools() end,
  exit = function() _M.close_pools() end,
}

-- Closes every pooled connection; from here on setkeepalive closes instead of pooling.
function _M.close_pools()
  closing = true
  for _, p in pairs(pools) do
    local idle = p.idle
    while idle[1] do conn_close(idle[#idle]) end
  end
end

---------------------------------------------------------------------------------------------------
-- resolving

_M.cache = {} -- host -> { addrs, expires }

local function literal(host)
  return find(host, "^%d+%.%d+%.%d+%.%d+$") or find(host, ":", 1, true)
end

-- The addresses of host, from the cache or the resolver; nil, err after ms.
local function resolve(host, ms)
  if literal(host) then return { host } end
  local hit = _M.cache[host]
  if hit and hit.expires > core.now() then return hit.addrs end
  local w = { co = running(), host = host }
  local ok, err = tcp_resolve(host, w)
  local addrs
  if ok then addrs, err = wait(ms) end
  w.co = nil
  if addrs and #addrs > 0 then return addrs end
  if err == "timeout" then return nil, "timeout" end
  return nil, host .. " could not be resolved (" .. tostring(err or "no address") .. ")"
end
_M.resolve = resolve -- (moonfork.http.pass resolves its upstreams' names here)

---------------------------------------------------------------------------------------------------
-- connect

local function attach(self, conn)
  self._c = conn
  conn.root = adopt(conn, conn_orphaned)
end

-- One connection to addr (or the path): the connection, or nil, err (closed).
local function dial(addr, port, ms)
  local conn, err = new_conn(port == nil)
  if not conn then return nil, err end
  local ok
  ok, err = tcp_connect(conn.ud, addr, port)
  if ok then ok, err = wait_on(conn, "cco", ms) end
  if ok then return conn end
  conn_close(conn)
  return nil, err
end

-- Takes an idle connection from p, or waits in its backlog; true when the caller may dial.
local function pool_take(self, p, opts, ms)
  while true do
    local conn = remove(p.idle)
    while conn and not tcp_alive(conn.ud, true) do -- closed by the peer a moment ago: not reported yet
      conn_close(conn)
      conn = remove(p.idle)
    end
    if conn then
      conn.pooled = false
      if conn.timer then cancel(conn.timer, conn) end
      conn.timer = nil
      conn.reused = conn.reused + 1
      attach(self, conn)
      return conn
    end
    local backlog = opts and opts.backlog
    if not backlog or p.count < p.size then return nil end
    if #p.queue >= backlog then return nil, "too many waiting connect operations" end
    local w = { co = running() }
    p.queue[#p.queue + 1] = w
    local ok, err = wait(ms)
    if not ok then
      for i = 1, #p.queue do
        if p.queue[i] == w then remove(p.queue, i) break end
      end
      return nil, err
    end
  end
end

local function connect_addrs(host, port, ms)
  local addrs, err = resolve(host, ms)
  if not addrs then return nil, err end
  local conn
  for i = 1, #addrs do
    conn, err = dial(addrs[i], port, ms)
    if conn or err ~= "connection refused" then break end
  end
  return conn, err
end

-- sock:connect(host, port[, opts]) or sock:connect("unix:/path"[, opts]) -> 1 | nil, err
function Socket:connect(host, port, opts)
  if type(host) ~= "string" then error("sock:connect(host, port): host must be a string", 2) end
  local path = byte(host, 1) == U and sub(host, 1, 5) == "unix:" and sub(host, 6) or nil
  if path then
    opts, port = port, nil
  else
    port = tonumber(port)
    if not port or port < 0 or port > 65535 then error("sock:connect(host, port): bad port", 2) end
  end
  if opts ~= nil and type(opts) ~= "table" then error("sock:connect(): opts must be a table", 2) end
  if self._c then self:close() end
  local name = opts and opts.pool or (path or (host .. ":" .. port))
  local p = pool_get(name, opts and opts.pool_size)
  local ms = timeout_of(self._ct)
  local conn, err = pool_take(self, p, opts, ms)
  if conn then return 1 end
  if err then return nil, err end
  if path then
    conn, err = dial(path, nil, ms)
  else
    conn, err = connect_addrs(host, port, ms)
  end
  if not conn then return nil, err end
  conn.pool = p
  p.count = p.count + 1
  attach(self, conn)
  return 1
end

---------------------------------------------------------------------------------------------------
-- send

-- sock:send(data) -> bytes | nil, err; data is a string, a number, or a nested table of them.
function Socket:send(data)
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  if conn.wco then return nil, "socket busy writing" end
  local bytes, queued = tcp_send(conn.ud, data)
  local err = queued
  if bytes and queued then
    local ok, werr = wait_on(conn, "wco", timeout_of(self._st))
    if not ok then bytes, err = nil, werr end
  end
  if bytes then return bytes end
  self:_fail()
  return nil, err
end

---------------------------------------------------------------------------------------------------
-- receive

-- Waits until more data or the end has arrived: true, or nil, err ("timeout", "closed", ...).
local function fill(self, conn)
  if conn.eof then return nil, conn.eof end
  if conn.rco then return nil, "socket busy reading" end
  if not conn.reading then
    local ok, err = tcp_read(conn.ud, true)
    if not ok then return nil, err end
    conn.reading = true
  end
  return wait_on(conn, "rco", timeout_of(self._rt))
end

local function take(conn, n)
  local buf = conn.buf
  conn.buf = sub(buf, n + 1)
  return sub(buf, 1, n)
end

-- The failure of a receive: a read timeout leaves the socket usable, anything else closes it; what
-- had arrived is handed back as `partial`.
function Socket:_fail_read(conn, err)
  local partial = take(conn, #conn.buf)
  if err ~= "timeout" then self:_fail() end
  return nil, err, partial
end

function Socket:_fail()
  local conn = self._c
  self._c = nil
  if conn then conn_close(conn) end
end

local function receive_line(self, conn)
  while true do
    local i = find(conn.buf, "\n", 1, true)
    if i then
      local line = take(conn, i)
      line = sub(line, 1, -2)
      if find(line, "\r", 1, true) then line = gsub(line, "\r", "") end
      return line
    end
    local ok, err = fill(self, conn)
    if not ok then return self:_fail_read(conn, err) end
  end
end

local function receive_all(self, conn)
  while true do
    local ok, err = fill(self, conn)
    if not ok then
      if err == "closed" and conn.eof then return take(conn, #conn.buf) end
      return self:_fail_read(conn, err)
    end
  end
end

-- sock:receive([pattern | n]) -> data | nil, err, partial. "*l" (the default) is a line without its
-- CR LF (every CR in it is dropped), "*a" everything until the peer closes, n exactly n bytes.
function Socket:receive(pattern)
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  local n = type(pattern) == "number" and pattern or tonumber(pattern)
  if n then
    if n < 0 then error("sock:receive(n): n must not be negative", 2) end
    while #conn.buf < n do
      local ok, err = fill(self, conn)
      if not ok then return self:_fail_read(conn, err) end
    end
    return take(conn, n)
  end
  if pattern == nil or pattern == "*l" or pattern == "l" then return receive_line(self, conn) end
  if pattern == "*a" or pattern == "a" then return receive_all(self, conn) end
  error("sock:receive(pattern): bad pattern " .. tostring(pattern), 2)
end

-- sock:receiveany(max) -> up to max bytes, whatever has arrived (waits for something).
function Socket:receiveany(max)
  max = tonumber(max)
  if not max or max <= 0 then error("sock:receiveany(max): max must be a positive number", 2) end
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  if #conn.buf == 0 then
    local ok, err = fill(self, conn)
    if not ok or #conn.buf == 0 then return self:_fail_read(conn, err or conn.eof) end
  end
  local buf = conn.buf
  if #buf <= max then -- all of it: no copies
    conn.buf = ""
    return buf
  end
  return take(conn, max)
end

-- The reader receiveuntil returns: it(size) as OpenResty's (see the README).
local function until_reader(self, pattern, inclusive)
  local plen, scanned, done = #pattern, 0, false
  return function(size)
    local conn = self._c
    if not conn or conn.closed then return nil, "closed" end
    if done then
      done = false
      return nil
    end
    while true do
      local buf = conn.buf
      local i = find(buf, pattern, scanned > plen and scanned - plen + 1 or 1, true)
      if i then
        scanned = 0
        if size and i - 1 > size then return take(conn, size) end -- more before the pattern
        if size and i > 1 then -- the last piece before the pattern; the next call returns nil
          local data = take(conn, i - 1)
          local tail = take(conn, plen)
          if inclusive then data = data .. tail end
          done = true
          return data
        end
        local data = take(conn, i - 1 + plen)
        if not inclusive then data = sub(data, 1, i - 1) end
        if size then
          if data == "" then return nil end
          done = true
        end
        return data
      end
      scanned = #buf
      local safe = #buf - plen + 1 -- bytes that cannot be the start of the pattern
      if size and safe >= size then
        scanned = scanned - size
        return take(conn, size)
      end
      local ok, err = fill(self, conn)
      if not ok then
        scanned = 0
        return self:_fail_read(conn, err)
      end
    end
  end
end

-- sock:receiveuntil(pattern[, { inclusive = true }]) -> it([size])
function Socket:receiveuntil(pattern, opts)
  if type(pattern) ~= "string" or pattern == "" then
    error("sock:receiveuntil(pattern): pattern must be a non-empty string", 2)
  end
  return until_reader(self, pattern, opts and opts.inclusive)
end

---------------------------------------------------------------------------------------------------
-- TLS

-- sock:sslhandshake(reused_session, server_name, verify) -> session | true | nil, err. SNI with
-- server_name; with verify, the chain against the system's CA store and the name against server_name.
-- reused_session: a session a former handshake returned, offered to the server (it may decline), or
-- false, and then the answer is true rather than a session. A pooled connection that already speaks
-- TLS answers at once. sock:sessionreused() says whether the last handshake resumed one.
function Socket:sslhandshake(reused_session, server_name, verify)
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  if server_name ~= nil and type(server_name) ~= "string" then
    error("sock:sslhandshake(session, server_name, verify): server_name must be a string", 2)
  end
  if reused_session ~= nil and reused_session ~= false and type(reused_session) ~= "userdata" then
    error("sock:sslhandshake(session, server_name, verify): session must come from a former sslhandshake", 2)
  end
  if not conn.tls then
    if #conn.buf > 0 then
      self:_fail()
      return nil, "data arrived before the TLS handshake"
    end
    local ok, err = tcp_tls(conn.ud, server_name, verify and true or false, reused_session or nil)
    conn.reading = true
    if ok then ok, err = wait_on(conn, "hco", timeout_of(self._rt)) end
    if not ok then
      self:_fail()
      return nil, err
    end
    conn.tls = true
  end
  if reused_session == false then return true end
  return (ctcp.session(conn.ud))
end

-- sock:sessionreused() -> whether this connection's TLS handshake resumed a session (not in OpenResty).
function Socket:sessionreused()
  local conn = self._c
  if not conn or conn.closed or not conn.tls then return false end
  local _, reused = ctcp.session(conn.ud)
  return reused or false
end

---------------------------------------------------------------------------------------------------
-- timeouts, keep-alive, close

local function check_ms(ms, name)
  if ms ~= nil and (type(ms) ~= "number" or not (ms >= 0 and ms <= sched.MAX_MS)) then
    error("sock:" .. name .. "(ms): ms must be a number from 0 to 2^31", 3)
  end
  return ms
end

function Socket:settimeout(ms)
  check_ms(ms, "settimeout")
  self._ct, self._st, self._rt = ms, ms, ms
end

function Socket:settimeouts(connect_ms, send_ms, read_ms)
  self._ct, self._st, self._rt =
    check_ms(connect_ms, "settimeouts"), check_ms(send_ms, "settimeouts"), check_ms(read_ms, "settimeouts")
end

local function idle_expired(conn)
  conn.timer = nil
  conn_close(conn)
end

-- sock:setkeepalive([idle_ms[, pool_size]]) -> 1 | nil, err: the connection goes back to its pool.
function Socket:setkeepalive(idle_ms, pool_size)
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  if #conn.buf > 0 or conn.eof or conn.rco or conn.wco then
    self:_fail()
    return nil, "connection in dubious state"
  end
  self._c = nil
  local p = conn.pool
  if closing or not p then
    conn_close(conn)
    return 1
  end
  if pool_size and pool_size > 0 and not p.sized then p.size, p.sized = pool_size, true end
  disown(conn, conn.root)
  conn.root, conn.pooled = nil, true
  if not conn.reading then -- a close, or data out of turn, while pooled closes it
    conn.reading = tcp_read(conn.ud, true) and true or false
  end
  tcp_keep_loop(conn.ud, false)
  idle_ms = idle_ms or DEFAULT_IDLE
  if idle_ms > 0 then conn.timer = after(idle_ms, idle_expired, conn) end
  local idle = p.idle
  idle[#idle + 1] = conn
  if #idle > p.size then conn_close(idle[1]) end -- the least recently used goes
  pool_next(p)
  return 1
end

function Socket:getreusedtimes()
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  return conn.reused
end

function Socket:close()
  local conn = self._c
  if not conn or conn.closed then return nil, "closed" end
  self._c = nil
  conn_close(conn)
  return 1
end

-- moonfork.socket.tcp() -> a socket object, not connected.
function _M.tcp()
  return setmetatable({}, Socket)
end

-- How many connections wait idle in the worker's pools (for tests and status).
function _M.pooled()
  local n = 0
  for _, p in pairs(pools) do n = n + #p.idle end
  return n
end

return _M
