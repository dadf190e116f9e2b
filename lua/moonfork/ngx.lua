-- moonfork.ngx: a global `ngx` holding the part of OpenResty's API that pure-Lua drivers need.
--
-- `require "moonfork.ngx"` installs the table as the global `ngx` (and returns it), so a driver
-- written for OpenResty (lua-resty-redis and the like) loads and runs unchanged. Everything here is
-- built on what moonfork already has: ngx.socket.tcp is moonfork.socket.tcp (the same cosocket API),
-- ngx.null is cjson.null, ngx.sleep and ngx.timer.at are sched waits and timers in OpenResty's units
-- (seconds). What needs a request (ngx.say, ngx.req, ngx.exit), or PCRE
-- (ngx.re) is not here: the README lists what is and what is not.
--
-- The module loads in the master too (the master evaluates the script up to moonfork.listen()), where
-- nothing runs: there ngx.worker.id() is nil and ngx.timer.at() schedules nothing.
local moonfork = require "moonfork"
local core = require "moonfork.core"
local sched = require "moonfork.sched"
local cjson = require "cjson"
local codec = require "moonfork.ngx_codec"
local ffi = require "ffi"

local type, tostring, tonumber, select, error, pairs, pcall = type, tostring, tonumber, select, error, pairs, pcall
local setmetatable, getmetatable, rawset, unpack = setmetatable, getmetatable, rawset, unpack
local concat, floor = table.concat, math.floor
local getinfo = debug.getinfo
local running = coroutine.running
local byte, char, format, gsub = string.byte, string.char, string.format, string.gsub

local worker = core.role == "worker"

local ngx = {}

ngx.null = cjson.null
ngx.OK, ngx.ERROR, ngx.AGAIN, ngx.DONE, ngx.DECLINED = 0, -1, -2, -4, -5

-- status codes, under the names OpenResty gives them
local http = {
  CONTINUE = 100, SWITCHING_PROTOCOLS = 101, OK = 200, CREATED = 201, ACCEPTED = 202, NO_CONTENT = 204,
  PARTIAL_CONTENT = 206, SPECIAL_RESPONSE = 300, MOVED_PERMANENTLY = 301, MOVED_TEMPORARILY = 302,
  SEE_OTHER = 303, NOT_MODIFIED = 304, TEMPORARY_REDIRECT = 307, PERMANENT_REDIRECT = 308,
  BAD_REQUEST = 400, UNAUTHORIZED = 401, PAYMENT_REQUIRED = 402, FORBIDDEN = 403, NOT_FOUND = 404,
  NOT_ALLOWED = 405, NOT_ACCEPTABLE = 406, REQUEST_TIMEOUT = 408, CONFLICT = 409, GONE = 410,
  UPGRADE_REQUIRED = 426, TOO_MANY_REQUESTS = 429, CLOSE = 444, ILLEGAL = 451,
  INTERNAL_SERVER_ERROR = 500, METHOD_NOT_IMPLEMENTED = 501, BAD_GATEWAY = 502,
  SERVICE_UNAVAILABLE = 503, GATEWAY_TIMEOUT = 504, VERSION_NOT_SUPPORTED = 505, INSUFFICIENT_STORAGE = 507,
}
for name, code in pairs(http) do ngx["HTTP_" .. name] = code end

ngx.config = {
  subsystem = "http",
  ngx_lua_version = 10026,  -- the lua-nginx-module of OpenResty 1.25.3 (0.10.26), whose API this follows
  nginx_version = 1025003,
  debug = false,
  prefix = function() return "" end,
  nginx_configure = function() return "" end,
}

ngx.var = {}      -- no nginx variables: every ngx.var.NAME is nil
ngx.shared = require "moonfork.shared" -- ngx.shared.NAME: the dicts listen({ shared = {...} }) declared

---------------------------------------------------------------------------------------------------
-- sockets

local tcp = moonfork.socket.tcp

-- ngx.socket.connect(host, port[, opts]) / ("unix:/path"[, opts]): a new connected socket, or nil, err.
local function socket_connect(...)
  local sock = tcp()
  local ok, err = sock:connect(...)
  if not ok then return nil, err end
  return sock
end

ngx.socket = { tcp = tcp, stream = tcp, connect = socket_connect }

---------------------------------------------------------------------------------------------------
-- time: ngx.now() in seconds with millisecond precision, from the wall clock

-- gettimeofday under a name of our own, so that a script's ffi.cdef of it cannot clash with ours
pcall(ffi.cdef, [[
  struct moonfork_ngx_timeval { long sec; long usec; };
  int moonfork_ngx_gettimeofday(struct moonfork_ngx_timeval *tv, void *tz) __asm__("gettimeofday");
]])
local tv = ffi.new("struct moonfork_ngx_timeval")
local function wall_ms()
  ffi.C.moonfork_ngx_gettimeofday(tv, nil)
  return tonumber(tv.sec) * 1000 + floor(tonumber(tv.usec) / 1000)
end

function ngx.now() return wall_ms() / 1000 end
function ngx.time() return floor(wall_ms() / 1000) end
function ngx.update_time() end -- the clock is read at each call: nothing is cached to refresh
function ngx.today() return os.date("%Y-%m-%d", ngx.time()) end
function ngx.localtime() return os.date("%Y-%m-%d %H:%M:%S", ngx.time()) end
function ngx.utctime() return os.date("!%Y-%m-%d %H:%M:%S", ngx.time()) end

local function seconds_arg(sec, name)
  if type(sec) ~= "number" then error("bad argument #1 to '" .. name .. "' (number expected, got " .. type(sec) .. ")", 3) end
  return floor(sec)
end

function ngx.http_time(sec)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", seconds_arg(sec, "http_time"))
end

function ngx.cookie_time(sec)
  return os.date("!%a, %d-%b-%y %H:%M:%S GMT", seconds_arg(sec, "cookie_time"))
end

-- ngx.sleep(seconds): suspends the caller without blocking the worker (0 yields to the loop once).
local sleep_ms = sched.sleep
function ngx.sleep(sec)
  if type(sec) ~= "number" or not (sec >= 0) then
    error("ngx.sleep(seconds): seconds must be a non-negative number, got " .. tostring(sec), 2)
  end
  return sleep_ms(sec * 1000) -- a tail call: its errors point at the caller of ngx.sleep
end
if not worker then ngx.sleep = moonfork.sleep end -- raises: nothing may wait in the master

---------------------------------------------------------------------------------------------------
-- logging

ngx.STDERR, ngx.EMERG, ngx.ALERT, ngx.CRIT, ngx.ERR, ngx.WARN, ngx.NOTICE, ngx.INFO, ngx.DEBUG =
  0, 1, 2, 3, 4, 5, 6, 7, 8
local level_names = { [0] = "stderr", "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug" }

-- Messages above this level are dropped; nginx's own default ("error") would hide ngx.WARN and
-- ngx.INFO, which drivers use for what a newcomer wants to see. Change with ngx.log_level = ngx.DEBUG.
local M = { log_level = ngx.INFO }

local function log_piece(v, i)
  local t = type(v)
  if t == "string" or t == "number" then return v end
  if v == nil then return "nil" end
  if t == "boolean" then return v and "true" or "false" end
  if v == ngx.null then return "null" end
  local mt = getmetatable(v)
  if t == "table" and mt and mt.__tostring then return tostring(v) end
  error("bad argument #" .. i .. " to 'log' (expected table to have __tostring metamethod)", 3)
end

-- ngx.log(level, ...): the arguments joined, as "[level] file:line: message", in the worker's log.
function ngx.log(level, ...)
  if type(level) ~= "number" or level_names[level] == nil then
    error("bad argument #1 to 'log' (a level such as ngx.ERR expected, got " .. tostring(level) .. ")", 2)
  end
  if level > M.log_level then return end -- before looking at the arguments, as nginx does
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = log_piece((select(i, ...)), i + 1) end
  local info = getinfo(2, "Sl")
  local where = info and (info.short_src .. ":" .. (info.currentline or 0) .. ": ") or ""
  moonfork.log("[" .. level_names[level] .. "] " .. where .. concat(parts))
end

---------------------------------------------------------------------------------------------------
-- the worker

ngx.worker = {
  -- 0 .. count() - 1, as nginx numbers its workers (moonfork's are 1..N); nil in the master
  id = function() if worker then return core.id - 1 end end,
  count = function() return core.workers or 1 end,
  pid = function() return core.pid end,
  -- true once this worker drains (a reload, a shutdown, --max-requests): finish and let go
  exiting = function() return moonfork.draining == true end,
}

-- ngx.get_phase(): "init" in the master, "init_worker" while the script's main chunk runs in a
-- worker, "timer" in an ngx.timer callback, else "content" (a handler, or another callback).
local PROBE = {}
local function noop() end
local function current_root()
  local root = sched.adopt(PROBE, noop)
  if root then sched.disown(PROBE, root) end
  return root
end

local timer_roots = setmetatable({}, { __mode = "k" })

function ngx.get_phase()
  if not worker then return "init" end
  if not running() then return "init_worker" end
  local root = current_root()
  if root and timer_roots[root] then return "timer" end
  return "content"
end

---------------------------------------------------------------------------------------------------
-- ngx.ctx: a table of the running callback's own (a request, a timer), gone when it returns

local ctxs = setmetatable({}, { __mode = "k" })
local main_ctx = {}

local function drop_ctx(root) ctxs[root] = nil end

local function get_ctx()
  local root = current_root()
  if not root then return main_ctx end
  local ctx = ctxs[root]
  if not ctx then
    ctx = {}
    ctxs[root] = ctx
    sched.adopt(root, drop_ctx)
  end
  return ctx
end

local function set_ctx(t)
  if type(t) ~= "table" then error("ngx.ctx must be a table", 3) end
  local root = current_root()
  if not root then
    main_ctx = t
    return
  end
  if not ctxs[root] then sched.adopt(root, drop_ctx) end
  ctxs[root] = t
end

---------------------------------------------------------------------------------------------------
-- timers: ngx.timer.at(seconds, fn, ...) runs fn(premature, ...); ngx.timer.every repeats

local pending = {}   -- record -> true, for timers not yet run
local npending, nrunning = 0, 0

local function timer_log(trace)
  moonfork.log("error in ngx.timer callback: " .. trace)
end

local function timer_done(run) -- run = { root }: one per run (an `every` timer's runs may overlap)
  nrunning = nrunning - 1
  timer_roots[run[1]] = nil
end

-- Runs rec.fn(premature, args...) in the pooled coroutine a timer fired (or the drain) gave it.
local function timer_run(rec, premature)
  if not rec.every or premature then
    if not pending[rec] then return end
    pending[rec] = nil
    npending = npending - 1
  end
  local root = running()
  timer_roots[root] = true
  nrunning = nrunning + 1
  sched.adopt({ root }, timer_done)
  return rec.fn(premature == true, unpack(rec, 1, rec.n))
end

local function timer_new(every, delay, fn, ...)
  local name = every and "ngx.timer.every" or "ngx.timer.at"
  if type(delay) ~= "number" or not (delay >= 0 and delay * 1000 <= sched.MAX_MS) then
    error("bad argument #1 to '" .. name .. "' (delay must be a number of seconds from 0 to 2^31 ms)", 3)
  end
  if every and delay <= 0 then error("bad argument #1 to 'ngx.timer.every' (delay must be above 0)", 3) end
  if type(fn) ~= "function" then error("bad argument #2 to '" .. name .. "' (function expected)", 3) end
  if not worker then return true end -- the master's probe of the script: nothing runs there
  if moonfork.draining and (every or delay > 0) then return nil, "process exiting" end
  local rec = { fn = fn, n = select("#", ...), every = every, ... }
  local ms = delay * 1000
  rec.timer = sched.timer(ms, every and ms or 0, timer_run, 1, rec)
  pending[rec] = true
  npending = npending + 1
  return true
end

ngx.timer = {
  at = function(delay, fn, ...) return timer_new(false, delay, fn, ...) end,
  every = function(delay, fn, ...) return timer_new(true, delay, fn, ...) end,
  running_count = function() return nrunning end,
  pending_count = function() return npending end,
}

-- The worker drains: every pending timer runs now, with premature = true (as nginx's do when a
-- worker exits), and repeating ones stop.
local function expire_timers()
  local list = {}
  for rec in pairs(pending) do list[#list + 1] = rec end
  for i = 1, #list do
    local rec = list[i]
    sched.timer_stop(rec.timer)
    sched.spawn(timer_run, timer_log, rec, true)
  end
end
if worker then
  moonfork.on("drain", expire_timers)
  moonfork.on("exit", expire_timers)
end

---------------------------------------------------------------------------------------------------
-- encodings

ngx.encode_base64, ngx.decode_base64, ngx.decode_base64mime = codec.encode, codec.decode, codec.decode_mime

-- ngx.escape_uri(s): every byte but ALPHA / DIGIT / "-" / "." / "_" / "~" as %XX.
function ngx.escape_uri(s)
  if s == nil then return "" end
  s = tostring(s)
  return (gsub(s, "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

local function unhex(h) return char(tonumber(h, 16)) end

-- ngx.unescape_uri(s): %XX decoded, "+" is a space; a "%" not followed by two hex digits is kept.
function ngx.unescape_uri(s)
  if s == nil then return "" end
  s = gsub(tostring(s), "+", " ")
  return (gsub(s, "%%(%x%x)", unhex))
end

-- md5, sha1 and hmac_sha1 from libcrypto, loaded at the first call (an idle worker never maps it)
ngx.md5, ngx.md5_bin, ngx.sha1_bin, ngx.hmac_sha1 = codec.md5, codec.md5_bin, codec.sha1_bin, codec.hmac_sha1

---------------------------------------------------------------------------------------------------
-- the global

setmetatable(ngx, {
  __index = function(_, k)
    if k == "ctx" then return get_ctx() end
    if k == "log_level" then return M.log_level end
  end,
  __newindex = function(t, k, v)
    if k == "ctx" then return set_ctx(v) end
    if k == "log_level" then
      if type(v) ~= "number" or level_names[v] == nil then error("ngx.log_level must be a level such as ngx.ERR", 2) end
      M.log_level = v
      return
    end
    rawset(t, k, v)
  end,
})

_G.ngx = ngx
return ngx
