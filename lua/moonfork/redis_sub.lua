-- moonfork.redis_sub: the subscriptions of moonfork.redis, each on a connection of its own.
--
-- A subscription object outlives its connections: when one is lost, the subscription dials again
-- with backoff, sends its SUBSCRIBE (or PSUBSCRIBE) again, and once Redis has confirmed every channel
-- calls the client's onReconnect(sub). Each message runs fn(message, channel[, pattern]) in a pooled
-- coroutine of its own, so a handler may use Redis or sleep; an error in it is logged.
local sched = require "moonfork.sched"
local cr = package.loaded["moonfork.core.redis"]

local type, select, tostring, pcall, error, setmetatable, unpack = type, select, tostring, pcall, error,
  setmetatable, unpack
local running, isyieldable = coroutine.running, coroutine.isyieldable
local wake, spawn = sched.wake, sched.spawn

local _M = {}
local dep -- from moonfork.redis: dial, conn_close, lost, backoff = { min, max }, closing()

function _M.init(d) dep = d end

local Sub = {}
Sub.__index = Sub

local connect

local function retry(s)
  if s.closed or dep.closing() then return end
  local ms = s.backoff
  s.backoff = ms * 2 > dep.backoff[2] and dep.backoff[2] or ms * 2
  s.timer = sched.timer(ms, 0, connect, 1, s)
end

-- The first attempt of a caller that waits reports to it; later ones retry on their own.
local function failed(s, err)
  s.first_err = err
  local w = s.waiter
  if w then
    s.waiter = nil
    wake(w, nil, err)
    return
  end
  retry(s)
end

function connect(s)
  s.timer = nil
  if s.closed or dep.closing() then return end
  local conn, err = dep.dial(s.client, "sub")
  if conn and s.closed then return dep.conn_close(conn, "redis: closed") end
  if conn then
    conn.sub, s.conn, s.confirmed = s, conn, 0
    local ok, sent, e = pcall(cr.send, conn.ud, s.cmd, unpack(s.channels))
    if ok and sent then return end -- the confirmations come as replies
    err = "redis: " .. tostring(ok and e or sent)
    s.conn = nil
    dep.conn_close(conn, err)
  end
  failed(s, err)
end

local function up(s)
  s.backoff = dep.backoff[1]
  s.ups = s.ups + 1
  local w = s.waiter
  if w then
    s.waiter = nil
    wake(w, true)
  elseif s.ups > 1 and s.client.opts.onReconnect then
    spawn(s.client.opts.onReconnect, nil, s)
  end
end

-- A reply on a subscriber connection: a message, or a confirmation.
function _M.reply(conn, v, is_err)
  local s = conn.sub
  if is_err or type(v) ~= "table" or not s then
    return dep.lost(conn, "unexpected reply on a subscriber connection: " .. tostring(v))
  end
  local kind = v[1]
  if kind == "message" then
    spawn(s.fn, nil, v[3], v[2])
  elseif kind == "pmessage" then
    spawn(s.fn, nil, v[4], v[3], v[2])
  elseif kind == "subscribe" or kind == "psubscribe" then
    s.confirmed = s.confirmed + 1
    if s.confirmed == #s.channels then up(s) end
  end
end

-- The connection was lost (already closed): subscribe again, after a backoff.
function Sub:_lost(err)
  self.conn = nil
  if self.closed then return end
  failed(self, err)
end

-- sub:close(): no more messages; closing twice is fine.
function Sub:close()
  if self.closed then return end
  self.closed = true
  if self.timer then sched.timer_stop(self.timer) self.timer = nil end
  local conn = self.conn
  self.conn = nil
  if conn then dep.conn_close(conn, "redis: closed") end
  self.client.subs[self] = nil
  if self.waiter then wake(self.waiter, nil, "redis: closed") end
end

-- client:subscribe(channel..., fn) / client:psubscribe(pattern..., fn) -> sub | nil, err. From a
-- callback it waits until Redis has confirmed; at a script's top level it returns at once and
-- subscribes in the background (onReconnect is not called for that first time).
function _M.start(client, cmd, ...)
  local name = cmd == "SUBSCRIBE" and "subscribe" or "psubscribe"
  local n = select("#", ...)
  local fn = select(n, ...)
  if type(fn) ~= "function" or n < 2 then
    error("redis:" .. name .. "(channel..., fn): give one channel or more, then a function", 3)
  end
  local channels = { ... }
  channels[n] = nil
  for i = 1, n - 1 do
    local c = channels[i]
    if type(c) ~= "string" and type(c) ~= "number" then
      error("redis:" .. name .. "(): channels must be strings", 3)
    end
    channels[i] = tostring(c)
  end
  local s = setmetatable({ client = client, cmd = cmd, channels = channels, fn = fn, pattern = cmd ~= "SUBSCRIBE",
    confirmed = 0, ups = 0, closed = false, backoff = dep.backoff[1] }, Sub)
  if client.inert then return s end -- the master never connects
  if client.closed or dep.closing() then return nil, "redis: the client is closed" end
  client.subs[s] = true
  local co = running()
  if not (co and isyieldable()) then
    spawn(connect, nil, s)
    return s
  end
  s.waiter = co
  spawn(connect, nil, s)
  if s.waiter == nil then -- it failed before waiting (a bad address)
    s:close()
    return nil, s.first_err or "redis: could not subscribe"
  end
  local ok, err = sched.wait(client.opts.connectTimeout + client.opts.timeout)
  if ok then return s end
  s.waiter = nil
  s:close()
  if err == "timeout" then err = "redis: timeout subscribing" end
  return nil, err
end

return _M
