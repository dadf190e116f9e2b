-- spec/redis_server.lua: a real redis-server (Debian's redis-server package) for the specs, on a free
-- loopback port and a Unix socket in a temporary directory, started in the background and stopped by
-- pid. Ready means it answers PING, polled, never slept for.
--
--   local redis_server = require "spec.redis_server"
--   local r = redis_server.start({ appendonly = true })  -- r.port, r.path (unix socket), r.dir, r.proc
--   redis_server.cmd(r, "SET", "k", "v")                  -- one command over luasocket: reply or nil, err
--   redis_server.restart(r)                               -- same port, same directory (its data kept)
--   redis_server.stop(r)                                  -- SIGKILL by default; "TERM" to let it save
local helpers = require "spec.helpers"
local socket = require "socket"

local M = {}

M.BIN = os.getenv("REDIS_SERVER") or "/usr/bin/redis-server"

local function argv(r)
  local a = { M.BIN, "--port", tostring(r.port), "--bind", "127.0.0.1", "--unixsocket", r.path,
    "--unixsocketperm", "700", "--dir", r.dir, "--save", "", "--daemonize", "no",
    "--appendonly", r.opts.appendonly and "yes" or "no", "--loglevel", "warning" }
  if r.opts.appendonly then a[#a + 1] = "--appendfsync"; a[#a + 1] = "always" end
  if r.opts.password then a[#a + 1] = "--requirepass"; a[#a + 1] = r.opts.password end
  for _, x in ipairs(r.opts.args or {}) do a[#a + 1] = x end
  return a
end

-- RESP for one command, as redis-cli would send it.
local function encode(args)
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

local function read_reply(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return nil, rest end
  if kind == ":" then return tonumber(rest) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local data = c:receive(n + 2)
    return data and data:sub(1, n)
  end
  if kind == "*" then
    local n, t = tonumber(rest), {}
    for i = 1, math.max(n, 0) do t[i] = read_reply(c) end
    return t
  end
  return nil, "bad reply: " .. line
end

-- cmd(r, ...) -> the reply (false for a nil bulk), or nil, err
function M.cmd(r, ...)
  local c = socket.tcp()
  c:settimeout(5)
  local ok, err = c:connect("127.0.0.1", r.port)
  if not ok then c:close(); return nil, err end
  if r.opts.password then
    c:send(encode({ "AUTH", r.opts.password }))
    read_reply(c)
  end
  c:send(encode({ ... }))
  local v, e = read_reply(c)
  c:close()
  return v, e
end

local function launch(r)
  r.proc = helpers.bg_start(argv(r))
  local ready = helpers.wait_for(function()
    if helpers.bg_exited(r.proc) then return "exited" end
    return M.cmd(r, "PING") == "PONG" and "ready"
  end, 20)
  if ready ~= "ready" then
    local out = helpers.bg_stop(r.proc, "KILL")
    error("redis-server did not start (" .. tostring(ready) .. "): " .. out, 3)
  end
  r.pid = r.proc.pid
  return r
end

-- start([opts]) -> r. opts: appendonly (bool), password, args (extra redis-server arguments), port.
function M.start(opts)
  opts = opts or {}
  local dir = helpers.mktempdir()
  local r = { opts = opts, dir = dir, path = dir .. "/redis.sock", port = opts.port or helpers.free_port() }
  return launch(r)
end

-- restart(r): a new server on the same port and directory (an append-only file is read back).
function M.restart(r)
  if r.proc then helpers.bg_stop(r.proc, "KILL") end
  return launch(r)
end

-- stop(r[, sig]): stops the server by pid and removes its directory.
function M.stop(r, sig)
  if r.proc then helpers.bg_stop(r.proc, sig or "KILL") end
  r.proc = nil
  helpers.sh("rm -rf " .. helpers.shell_quote(r.dir))
end

return M
