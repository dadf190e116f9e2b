-- moonfork.pg: PostgreSQL from request handlers, non-blocking (libpq under server/net_pg.c).
--
--   local db = moonfork.pg.pool({ conninfo = "host=/run/postgresql dbname=app", size = 8 })
--   local rows, err, code = db:query("SELECT id, title FROM notes WHERE owner = $1", owner)
--   db:transaction(function(tx) tx:query(...) end)          -- commit on return, rollback on error
--   db:listen("events", function(payload, channel) end)      -- LISTEN/NOTIFY
--
-- A pool belongs to one worker: its connections open on first use (never in the master), up to
-- `size`; a caller finding them all busy waits in line up to `timeout` ms. Each query waits through
-- sched.wait with its connection as owner, so a connection that dies wakes its caller with an error.
-- A connection goes back to the pool only when it is idle outside any transaction; one left inside
-- a transaction is rolled back first, and one that died is closed (the next caller opens another).
-- Errors: nil, "SQLSTATE: message", SQLSTATE (server errors and "08001"/"08006" for connections);
-- nil, "timeout: ..." or "closed: ..." (no code) for what this side decides.
local core = require "moonfork.core"
local moonfork = require "moonfork"

local type, tostring, error, pairs, setmetatable, pcall, floor =
  type, tostring, error, pairs, setmetatable, pcall, math.floor
local remove, find, gsub = table.remove, string.find, string.gsub
local running = coroutine.running

local _M = { _VERSION = "0.1" }

local DEFAULT_SIZE = 8
local DEFAULT_TIMEOUT = 10000         -- ms a caller waits for a free connection
local DEFAULT_CONNECT_TIMEOUT = 10000 -- ms
local LISTEN_BACKOFF_MAX = 5000       -- ms between reconnects of the LISTEN connection

local Pool, Tx = {}, {}
local pools = setmetatable({}, { __mode = "k" }) -- every pool of this worker, for drain and exit
Pool.__index, Tx.__index = Pool, Tx

local function positive_ms(v, name, default)
  if v == nil then return default end
  if type(v) ~= "number" or not (v > 0 and v <= 2 ^ 31) then
    error("moonfork.pg.pool(options): " .. name .. " must be a number of milliseconds (> 0)", 3)
  end
  return v
end

-- pool(options) -> db. options: conninfo (libpq's connection string, required), size (8), timeout
-- (ms to wait for a free connection, 10000), connect_timeout (ms, 10000), query_timeout (ms, none:
-- a query that takes longer gets nil, "timeout: ..." and its connection is closed).
function _M.pool(opts)
  if type(opts) ~= "table" or type(opts.conninfo) ~= "string" then
    error("moonfork.pg.pool(options): options.conninfo must be a libpq connection string", 2)
  end
  local size = opts.size or DEFAULT_SIZE
  if type(size) ~= "number" or size < 1 or size ~= floor(size) then
    error("moonfork.pg.pool(options): size must be a whole number >= 1", 2)
  end
  local db = setmetatable({
    conninfo = opts.conninfo, size = size, count = 0, idle = {}, queue = {}, held = {},
    timeout = positive_ms(opts.timeout, "timeout", DEFAULT_TIMEOUT),
    connect_timeout = positive_ms(opts.connect_timeout, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
    query_timeout = positive_ms(opts.query_timeout, "query_timeout", nil),
    listeners = {}, closed = false,
  }, Pool)
  pools[db] = true
  return db
end

_M.null = moonfork.null

if core.role == "master" then
  -- The master only reads the script's options: it never connects.
  local function workers_only() error("moonfork.pg: queries run in workers (handlers, timers), not in the master", 2) end
  Pool.query, Pool.transaction, Pool.listen, Pool.close = workers_only, workers_only, function() return true end,
    function() end
  return _M
end

local sched = require "moonfork.sched"
local cpg = package.loaded["moonfork.core.pg"]
local wait, notify, sclose, spawn, sleep = sched.wait, sched.notify, sched.close, sched.spawn, sched.sleep
local pg_connect, pg_query, pg_close, pg_idle, pg_in_tx =
  cpg.connect, cpg.query, cpg.close, cpg.idle, cpg.in_transaction

local draining = false

---------------------------------------------------------------------------------------------------
-- connections: conn = { ud, db, dead = err | nil, busy, on_notify }

cpg.on {
  connected = function(conn, err)
    notify(conn, err == nil or nil, err)
  end,
  result = function(conn, rows, err, code)
    conn.busy = false
    notify(conn, rows, err, code)
  end,
  notify = function(conn, channel, payload)
    if conn.on_notify then conn.on_notify(channel, payload) end
  end,
  dead = function(conn, err)
    conn.dead = conn.dead or err
    conn.busy = false
    notify(conn, nil, err, "08006")
    if conn.deadwait then notify(conn.deadwait, "dead") end
    local db = conn.db
    if conn.pooled then -- idle in the pool: gone now; the next caller opens another
      for i = #db.idle, 1, -1 do
        if db.idle[i] == conn then remove(db.idle, i) end
      end
      conn.pooled = false
      db.count = db.count - 1
      pg_close(conn.ud)
      local w = remove(db.queue, 1)
      if w then notify(w) end
    end
  end,
  decode = require("cjson").decode,
}

local function has_code(err) return find(err, "^%w%w%w%w%w: ") ~= nil end

local function open(db)
  local conn = { db = db }
  local ud, err = pg_connect(conn, db.conninfo)
  if not ud then return nil, "08001: " .. err, "08001" end
  conn.ud = ud
  local ok, e = wait(db.connect_timeout, conn)
  if ok then return conn end
  pg_close(ud)
  if e == "timeout" then e = "could not connect within " .. db.connect_timeout .. " ms" end
  if has_code(e) then e = e:sub(8) end
  return nil, "08001: " .. e, "08001"
end

-- Runs one statement on conn: rows | nil, err, code.
local function run(db, conn, sql, ...)
  if conn.dead then return nil, conn.dead, "08006" end
  if conn.busy then return nil, "busy: a query is already running on this connection" end
  local ok, err = pg_query(conn.ud, sql, ...)
  if not ok then
    conn.dead = "08006: " .. err
    return nil, conn.dead, "08006"
  end
  conn.busy = true
  local rows, e, code = wait(db.query_timeout, conn)
  if rows == nil and e == "timeout" then
    conn.dead = "timeout: the query took longer than " .. db.query_timeout .. " ms"
    return nil, conn.dead
  end
  if rows == nil and e == "closed" then return nil, "closed: the pool was closed" end
  return rows, e, code
end

---------------------------------------------------------------------------------------------------
-- the pool

local function acquire(db)
  if not running() then -- the main chunk: nothing to wait in (checked before a connection is counted)
    error("moonfork.pg: queries can only run in a request handler, a timer or another moonfork callback", 3)
  end
  while true do
    if db.closed then return nil, "closed: the pool was closed" end
    local conn = remove(db.idle)
    if conn then
      conn.pooled = false
      db.held[conn] = true
      return conn
    end
    if db.count < db.size then
      db.count = db.count + 1
      local c, err, code = open(db)
      if not c then
        db.count = db.count - 1
        local w = remove(db.queue, 1)
        if w then notify(w) end
        return nil, err, code
      end
      db.held[c] = true
      return c
    end
    local w = {}
    db.queue[#db.queue + 1] = w
    local _, err = wait(db.timeout, w)
    if err == "timeout" then
      for i = 1, #db.queue do
        if db.queue[i] == w then remove(db.queue, i) break end
      end
      return nil, "timeout: no free connection in the pool within " .. db.timeout .. " ms"
    end
  end
end

local function discard(db, conn)
  db.held[conn] = nil
  pg_close(conn.ud)
  sclose(conn)
  db.count = db.count - 1
end

-- Back to the pool, rolled back first if a transaction was left open; closed if it cannot be reused.
local function release(db, conn)
  if not conn.dead and not db.closed and pg_in_tx(conn.ud) then run(db, conn, "ROLLBACK") end
  if conn.dead or db.closed or draining or not pg_idle(conn.ud) then
    discard(db, conn)
  else
    db.held[conn] = nil
    conn.pooled = true
    db.idle[#db.idle + 1] = conn
  end
  local w = remove(db.queue, 1)
  if w then notify(w) end
end

-- db:query(sql, ...) -> rows | nil, err, code. Parameters ($1, $2...) travel apart from the SQL:
-- strings, numbers, booleans, moonfork.null (or nil) for SQL NULL. rows[i].column, #rows,
-- rows.affected (INSERT/UPDATE/DELETE/SELECT counts), rows.command ("SELECT", "INSERT"...).
function Pool:query(sql, ...)
  if type(sql) ~= "string" then error("db:query(sql, ...): sql must be a string", 2) end
  local conn, err, code = acquire(self)
  if not conn then return nil, err, code end
  local rows
  rows, err, code = run(self, conn, sql, ...)
  release(self, conn)
  return rows, err, code
end

-- tx:query(sql, ...): as db:query, on the transaction's connection. A failed statement makes the
-- transaction roll back when fn returns.
function Tx:query(sql, ...)
  if type(sql) ~= "string" then error("tx:query(sql, ...): sql must be a string", 2) end
  local conn = self.conn
  if not conn then return nil, "closed: the transaction is over" end
  local rows, err, code = run(self.db, conn, sql, ...)
  if not rows and not self.failed then self.failed = { err, code } end
  return rows, err, code
end

local function finish(db, tx, conn, ok, ...)
  tx.conn = nil
  local err, code
  if not ok then
    err = (...)
    if type(err) ~= "string" then err = tostring(err) end
  elseif tx.failed then
    err, code = tx.failed[1], tx.failed[2]
  else
    local rows, e, c = run(db, conn, "COMMIT")
    if rows and rows.command == "COMMIT" then
      release(db, conn)
      return true, ...
    end
    err, code = e or "40000: the transaction was rolled back by the server", c or "40000"
  end
  if not conn.dead then run(db, conn, "ROLLBACK") end
  release(db, conn)
  return nil, err, code
end

-- db:transaction(fn) -> true, fn's results (committed) | nil, err, code (rolled back: fn raised
-- an error, or one of its statements failed). fn(tx) runs with one connection held throughout.
function Pool:transaction(fn)
  if type(fn) ~= "function" then error("db:transaction(fn): fn must be a function", 2) end
  local conn, err, code = acquire(self)
  if not conn then return nil, err, code end
  local rows
  rows, err, code = run(self, conn, "BEGIN")
  if not rows then
    release(self, conn)
    return nil, err, code
  end
  local tx = setmetatable({ conn = conn, db = self }, Tx)
  return finish(self, tx, conn, pcall(fn, tx))
end

---------------------------------------------------------------------------------------------------
-- LISTEN/NOTIFY: one connection of its own per pool, LISTENing again after each reconnect

local function quote_ident(name)
  return '"' .. gsub(name, '"', '""') .. '"'
end

local function listener_error(trace) core.log("error in a pg listen callback: " .. trace) end

local function dispatch(db, channel, payload)
  local list = db.listeners[channel]
  if not list then return end
  for i = 1, #list do spawn(list[i], listener_error, payload, channel) end
end

-- LISTENs to every channel conn does not listen to yet; true, or nil when the connection failed.
local function listen_all(db, conn)
  while true do
    local todo = {}
    for channel in pairs(db.listeners) do
      if not conn.listening[channel] then todo[#todo + 1] = channel end
    end
    if #todo == 0 then return true end
    for i = 1, #todo do
      local ok, err = run(db, conn, "LISTEN " .. quote_ident(todo[i]))
      if not ok then
        core.log("moonfork.pg: LISTEN " .. todo[i] .. " failed: " .. tostring(err))
        if conn.dead then return nil end
      end
      conn.listening[todo[i]] = true
    end
  end
end

local function listen_loop(db)
  local backoff = 100
  while not db.closed do
    local conn, err = open(db)
    if conn then
      conn.listening, conn.deadwait = {}, {}
      conn.on_notify = function(channel, payload) dispatch(db, channel, payload) end
      db.listen_conn = conn
      while not db.closed and listen_all(db, conn) do
        backoff = 100
        if wait(nil, conn.deadwait) ~= "more" then break end
      end
      db.listen_conn = nil
      pg_close(conn.ud)
    else
      core.log("moonfork.pg: the LISTEN connection failed: " .. tostring(err))
    end
    if db.closed then break end
    sleep(backoff)
    backoff = backoff * 2 > LISTEN_BACKOFF_MAX and LISTEN_BACKOFF_MAX or backoff * 2
  end
end

-- db:listen(channel, fn): fn(payload, channel) runs (in a coroutine of its own) for each NOTIFY on
-- channel, for as long as the worker lives; the connection is reopened and LISTENs again when it dies.
function Pool:listen(channel, fn)
  if type(channel) ~= "string" or channel == "" or find(channel, "%z") then
    error("db:listen(channel, fn): channel must be a non-empty string", 2)
  end
  if type(fn) ~= "function" then error("db:listen(channel, fn): fn must be a function", 2) end
  if self.closed then return nil, "closed: the pool was closed" end
  local list = self.listeners[channel]
  if not list then
    list = {}
    self.listeners[channel] = list
  end
  list[#list + 1] = fn
  if not self.listening then
    self.listening = true
    spawn(listen_loop, function(trace) core.log("moonfork.pg: the LISTEN loop failed: " .. trace) end, self)
  elseif self.listen_conn then
    notify(self.listen_conn.deadwait, "more")
  end
  return true
end

-- db:close(): closes every connection; callers waiting get nil, "closed: ...".
function Pool:close()
  if self.closed then return end
  self.closed = true
  for i = #self.idle, 1, -1 do pg_close(self.idle[i].ud) end
  self.idle = {}
  for conn in pairs(self.held) do
    pg_close(conn.ud)
    conn.dead = "closed: the pool was closed"
    sclose(conn)
  end
  local lc = self.listen_conn
  if lc then
    pg_close(lc.ud)
    sclose(lc)
    sclose(lc.deadwait)
  end
  while #self.queue > 0 do sclose(remove(self.queue, 1)) end
end

moonfork.on("drain", function()
  draining = true
  for db in pairs(pools) do
    while #db.idle > 0 do
      local conn = remove(db.idle)
      db.count = db.count - 1
      pg_close(conn.ud)
    end
  end
end)
moonfork.on("exit", function()
  for db in pairs(pools) do db:close() end
end)

return _M
