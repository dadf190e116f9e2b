-- streamlog: the chat's message log on a Redis Stream, shared by every host that uses the same Redis.
-- The same interface as chatlog.lua (new/attach/post/after/listen/wait/unwait/forget, .log, .synced),
-- chosen by server.lua when a Redis URL is configured.
--
--   post  Any worker runs one script on Redis (EVALSHA): when the post's idempotency key is known it
--         returns the id stored for it; else it XADDs the message (the stream trimmed to ~keep
--         entries) and records key -> id for a day. The poster is answered with that id only once the
--         XADD is done, so an acknowledged message is in the stream (and in Redis's append-only file).
--   read  One worker per host, the mesh leader, reads the stream: a blocking XREAD from the last id it
--         has, in a loop. What it reads it appends to its own copy and sends to the host's other
--         workers over the mesh as {t="msgs", prev=ID, msgs=[...]}, prev being the id its copy ended
--         at before. A worker whose copy ends at prev (or later) appends what is new; one whose copy
--         ends earlier missed something (a new leader, a dropped mesh stream) and reads the gap from
--         the stream itself (XRANGE with an exclusive start).
--   copy  Every worker keeps the newest `keep` messages, an exact run of the stream ending at `last`:
--         it is only ever extended with what follows `last` in the stream, so a client sees no gap and
--         no duplicate wherever it reconnects. A worker (re)starting loads the newest `keep` from the
--         stream (XREVRANGE) before it answers anyone, so a restarted host, or every worker of every
--         host dying at once, loses nothing the stream holds.
--
-- Ids are the stream's: "<ms>-<seq>", ms from Redis's clock only, and strictly increasing per stream
-- (Redis never assigns an id at or below the stream's last, whatever its clock does). Ordered by ms,
-- then seq. When Redis is unreachable, posts fail (done(nil, err)) and the reader retries, with
-- backoff, from the last id it delivered.
local cjson = require "cjson"
local moonfork = require "moonfork"
local redis = require "moonfork.redis"
local sched = require "moonfork.sched"

local encode, decode = cjson.encode, cjson.decode
local pairs, ipairs, pcall, type, tostring, tonumber = pairs, ipairs, pcall, type, tostring, tonumber
local match, find, format, remove = string.match, string.find, string.format, table.remove
local spawn, sleep = sched.spawn, sched.sleep

local _M = {}

local BLOCK_MS = 5000        -- one XREAD waits this long for news, then asks again
local BATCH = 200            -- entries per XREAD / XRANGE
local KEY_TTL = 86400        -- seconds a post's idempotency key is remembered
local MAX_KEY = 100          -- characters in a client's idempotency key

-- KEYS[1] the stream, KEYS[2] the post's key; ARGV: maxlen, user, text, key, ttl -> the id.
local POST_SCRIPT = [[
local id = redis.call('GET', KEYS[2])
if id then return id end
id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'user', ARGV[2], 'text', ARGV[3], 'k', ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
return id
]]

-- A stream id, as the client sent it ("ms-seq", "ms" or a number; "0" for "from the start"),
-- normalized to "ms-seq"; nil when it is not one.
local function parse(v)
  if type(v) == "number" then v = format("%.0f", v) end
  if type(v) ~= "string" then return nil end
  local ms, seq = match(v, "^(%d+)%-(%d+)$")
  if not ms then ms, seq = match(v, "^(%d+)$"), "0" end
  if not ms or #ms > 15 or #seq > 15 then return nil end -- (exact in a double)
  return format("%.0f-%.0f", tonumber(ms), tonumber(seq))
end

local function split(id)
  local ms, seq = match(id, "^(%d+)%-(%d+)$")
  return tonumber(ms), tonumber(seq)
end

-- a comes after b in the stream (both normalized ids)
local function newer(a, b)
  if a == b then return false end
  local am, as = split(a)
  local bm, bs = split(b)
  return am > bm or (am == bm and as > bs)
end
_M.newer = newer
_M.parse = parse

-- Creates the log for this worker. opts: url (redis://...), keep (default 500), stream (the key,
-- default "moonfork:chat").
function _M.new(nodes, opts)
  opts = opts or {}
  local self = {
    nodes = nodes,
    keep = opts.keep or 500,
    key = opts.stream or "moonfork:chat",
    redis = redis.client({ url = opts.url }),
    log = {},          -- kept messages, ascending ids
    last = nil,        -- id of the newest message of the stream this worker has ("0-0": none)
    synced = false,    -- loaded from the stream: clients may be answered
    counter = 0,
    waiters = {},
    listeners = {},
    leader = nil,
    reading = false,   -- this worker runs the XREAD loop
    catching = false,  -- an XRANGE catch-up is under way
    again = false,     -- and another one is wanted after it
    sha = nil,         -- the post script's SHA1, once loaded
    ID_HINT = "since must be a message id (ms-seq)",
  }
  return setmetatable(self, { __index = _M })
end

-- Turns a Last-Event-ID or ?since= value into a position in the log (nil: not one).
function _M:cursor(v)
  if v == nil then return "0-0" end
  return parse(v)
end

-- The position a client at `last` has: true when m comes after it.
function _M:is_after(id, last)
  return newer(id, last)
end

local function notify(self)
  local ls = self.listeners
  for i = 1, #ls do ls[i]() end
  local list = self.waiters
  if next(list) == nil then return end
  self.waiters = {}
  for fn in pairs(list) do fn() end
end

local function message(id, user, text, k)
  local ms = split(id)
  local m = { id = id, user = user, text = text, time = ms / 1000, k = k }
  m.json = encode({ id = id, user = user, text = text, time = m.time })
  return m
end

-- Appends the entries that follow `last` (all of them do when the caller read from `last`); an entry
-- Redis holds without our fields still moves `last` on. Returns the messages appended.
local function extend(self, entries)
  local out, log = {}, self.log
  for _, e in ipairs(entries) do
    local id = type(e) == "table" and parse(e[1])
    if id and newer(id, self.last) then
      local f, fields = {}, e[2]
      if type(fields) == "table" then
        for i = 1, #fields - 1, 2 do f[fields[i]] = fields[i + 1] end
      end
      if type(f.user) == "string" and type(f.text) == "string" then
        local m = message(id, f.user, f.text, f.k)
        m.prev = self.last
        log[#log + 1] = m
        out[#out + 1] = m
        if #log > self.keep then remove(log, 1) end
      else
        moonfork.log("chat: stream entry " .. id .. " has no user and text: skipped")
      end
      self.last = id
    end
  end
  return out
end

local function wire(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = { m.id, m.user, m.text, m.k } end
  return out
end

local function unwire(list)
  local out = {}
  for i, w in ipairs(list) do
    if type(w) ~= "table" then return nil end
    out[i] = { w[1], { "user", w[2], "text", w[3], "k", w[4] } }
  end
  return out
end

-- Appends entries read from the stream; the reader passes them on to this host's other workers.
local function deliver(self, entries, pass_on)
  local prev = self.last
  local out = extend(self, entries)
  if #out == 0 then return end
  if pass_on then self.nodes:broadcast(encode({ t = "msgs", prev = prev, msgs = wire(out) })) end
  notify(self)
end

-- Reads what follows `last` from the stream until there is no more (one catch-up at a time; a call
-- during one asks for another after it). Retries while Redis is unreachable.
local function catch_up(self)
  if self.catching then self.again = true return end
  self.catching = true
  local wait_ms = 100
  repeat
    self.again = false
    local r, err = self.redis:xrange(self.key, self.last == "0-0" and "-" or "(" .. self.last, "+", "COUNT", BATCH)
    if type(r) == "table" then
      deliver(self, r, false)
      if #r == BATCH then self.again = true end
      wait_ms = 100
    else
      moonfork.log("chat: catching up from the stream failed (" .. tostring(err) .. "); retrying")
      self.again = true
      sleep(wait_ms)
      wait_ms = wait_ms * 2 > 5000 and 5000 or wait_ms * 2
    end
  until not self.again or moonfork.draining
  self.catching = false
end

local ensure_reader

-- Whether this worker is the one the master named: its id and spawn serial (during a reload a new
-- worker hears the leader line for the old worker with its id, and must not read too).
local function leads(self)
  return self.leader == self.nodes.id and (self.leader_serial == nil or self.leader_serial == self.nodes.serial)
end

-- The reader: a blocking XREAD from `last`, for as long as this worker leads.
local function read_loop(self)
  local wait_ms, failing = 100, false
  while leads(self) and not moonfork.draining do
    local r, err = self.redis:xread("COUNT", BATCH, "BLOCK", BLOCK_MS, "STREAMS", self.key, self.last)
    if r ~= nil then -- entries, or null: nothing new within BLOCK_MS
      if failing then moonfork.log("chat: reading the stream again from " .. self.last) end
      failing, wait_ms = false, 100
      local s = type(r) == "table" and r[1]
      if type(s) == "table" and type(s[2]) == "table" then deliver(self, s[2], true) end
    else
      if not failing then moonfork.log("chat: reading the stream failed (" .. tostring(err) .. "); retrying from " .. self.last) end
      failing = true
      sleep(wait_ms)
      wait_ms = wait_ms * 2 > 2000 and 2000 or wait_ms * 2
    end
  end
  self.reading = false
end

function ensure_reader(self)
  if self.reading or not self.synced or not leads(self) or moonfork.draining then return end
  self.reading = true
  spawn(read_loop, function(trace)
    self.reading = false
    moonfork.log("chat: the stream reader failed: " .. trace)
    moonfork.setTimeout(1000, function() ensure_reader(self) end)
  end, self)
end

-- The newest `keep` messages of the stream, before this worker answers anyone.
local function load(self)
  local wait_ms = 100
  while true do
    local r, err = self.redis:xrevrange(self.key, "+", "-", "COUNT", self.keep)
    if type(r) == "table" then
      local entries = {}
      for i = #r, 1, -1 do entries[#entries + 1] = r[i] end
      self.last = "0-0"
      extend(self, entries)
      break
    end
    moonfork.log("chat: loading the history from the stream failed (" .. tostring(err) .. "); retrying")
    sleep(wait_ms)
    wait_ms = wait_ms * 2 > 2000 and 2000 or wait_ms * 2
  end
  self.synced = true
  notify(self)
  ensure_reader(self)
  catch_up(self) -- whatever a peer sent while we loaded
end

local function on_message(self, raw)
  local ok, t = pcall(decode, raw)
  if not ok or type(t) ~= "table" or t.t ~= "msgs" or type(t.msgs) ~= "table" then
    return moonfork.log("chat: bad mesh message ignored")
  end
  if not self.synced then return end -- load() catches up after it
  local prev = parse(t.prev)
  local entries = unwire(t.msgs)
  if not prev or not entries then return moonfork.log("chat: bad mesh message ignored") end
  if not newer(prev, self.last) then return deliver(self, entries, false) end
  catch_up(self) -- something between our last and theirs went past us
end

-- Wires the log to the mesh and starts loading. Call once, after listen().
function _M:attach()
  local nodes = self.nodes
  nodes:on("node", function(stream)
    stream:on("data", function(raw) on_message(self, raw) end)
    if self.synced then catch_up(self) end -- a stream dropped and made again may have lost messages
  end)
  nodes:on("leader", function(id, _, serial)
    self.leader, self.leader_serial = id, serial or nodes.leader_serial
    ensure_reader(self)
  end)
  moonfork.setTimeout(0, function() load(self) end) -- (never in the master: its timers do nothing)
end

local host_tag -- random, so keys made by different hosts never meet
local function new_key(self)
  if not host_tag then
    local f = io.open("/dev/urandom", "rb")
    local bytes = f and f:read(8) or tostring(os.time()) .. tostring(moonfork.pid)
    if f then f:close() end
    host_tag = bytes:gsub(".", function(c) return format("%02x", c:byte()) end)
  end
  self.counter = self.counter + 1
  return "s:" .. host_tag .. ":" .. self.nodes.id .. ":" .. self.counter
end

-- A client's idempotency key: nil when it sent none, false when it is unusable.
function _M.valid_key(k)
  if k == nil then return nil end
  if type(k) ~= "string" or #k == 0 or #k > MAX_KEY or not find(k, "^[%w%-_:.]+$") then return false end
  return true
end

-- Runs the post script (loading it first, and again when Redis lost it): id | nil, err.
local function run_post(self, key, user, text)
  local r = self.redis
  for _ = 1, 2 do
    if not self.sha then
      local sha, err = r:call("SCRIPT", "LOAD", POST_SCRIPT)
      if not sha then return nil, err end
      self.sha = sha
    end
    local id, err = r:evalsha(self.sha, 2, self.key, self.key .. ":post:" .. key, self.keep, user, text, key, KEY_TTL)
    if id then return id end
    if not find(tostring(err), "^NOSCRIPT") then return nil, err end
    self.sha = nil -- Redis restarted without its scripts
  end
  return nil, "the post script could not be loaded"
end

-- Posts a message; done(id) once it is in the stream, done(nil, err) when Redis could not take it.
-- key: the client's idempotency key (the same key posted again gives the same id, stored once).
-- Returns a handle for forget().
function _M:post(user, text, done, key)
  key = key and ("c:" .. key) or new_key(self)
  local h = { done = done }
  spawn(function()
    local id, err = run_post(self, key, user, text)
    local fn = h.done
    h.done = nil
    if fn then fn(id and tostring(id), err) end
  end)
  return h
end

-- Drops a post's callback (its client left); the post itself still goes through.
function _M:forget(h)
  if type(h) == "table" then h.done = nil end
end

-- The messages after id n (the whole kept log when n is older than it).
function _M:after(n)
  local out, log = {}, self.log
  local i = #log
  while i >= 1 and newer(log[i].id, n) do i = i - 1 end
  for j = i + 1, #log do out[#out + 1] = log[j] end
  return out
end

function _M:listen(fn)
  self.listeners[#self.listeners + 1] = fn
end

function _M:wait(fn)
  self.waiters[fn] = true
  return fn
end

function _M:unwait(fn)
  self.waiters[fn] = nil
end

return _M
