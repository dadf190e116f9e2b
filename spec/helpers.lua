-- spec/helpers.lua: starts the real moonfork binary, watches its log, and talks raw HTTP/1.1 to it.
--
-- Processes: every server is started through a small sh wrapper
--   ( "$BIN" ARGS <dev/null >OUT 2>>LOG & echo $! >PIDFILE; wait $!; echo $? >STATUS )
-- so the master's pid is known at once (even when the binary dies before it logs anything) and its
-- exit status is recorded. The listening port and the worker pids come from the master's log line
-- "listening on http://127.0.0.1:PORT with N workers (pids W1, W2)". Nothing here sleeps a fixed time:
-- every wait polls (socket.sleep(0.02)) until a condition holds or a generous deadline expires.
local socket = require "socket"
local cjson = require "cjson"

local M = {}

M.DEADLINE = tonumber(os.getenv("MOONFORK_SPEC_DEADLINE") or "") or 30 -- seconds; only reached on failure
M.POLL = 0.02

-- repository root: the parent of the directory holding this file
local function repo_root()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/spec/helpers%.lua$") or src:match("^(.*)/[^/]*/[^/]*$") or "."
  if dir == "" then dir = "." end
  if dir:sub(1, 1) ~= "/" then
    local pwd = os.getenv("PWD") or io.popen("pwd"):read("*l")
    dir = (dir == ".") and pwd or (pwd .. "/" .. dir:gsub("^%./", ""))
  end
  return dir
end

M.ROOT = repo_root()
M.FIXTURES = M.ROOT .. "/spec/fixtures"

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return M.ROOT .. "/" .. path
end

M.BIN = absolute(os.getenv("MOONFORK_BIN") or "build/moonfork")

---------------------------------------------------------------------------------------------------
-- small utilities

function M.now() return socket.gettime() end

function M.shell_quote(s)
  s = tostring(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  if type(ok) == "number" then return ok == 0 end -- Lua 5.1
  return ok == true and how == "exit" and code == 0
end

-- Polls fn() every M.POLL seconds until it returns a truthy value (returned) or `timeout` seconds pass
-- (returns nil). Waiting long is harmless: only a feature that is broken reaches the deadline.
function M.wait_for(fn, timeout)
  local deadline = M.now() + (timeout or M.DEADLINE)
  while true do
    local a, b, c = fn()
    if a then return a, b, c end
    if M.now() > deadline then return nil end
    socket.sleep(M.POLL)
  end
end

function M.mktempdir()
  local name = os.tmpname()
  os.remove(name)
  assert(sh("mkdir -p " .. M.shell_quote(name)), "mkdir " .. name)
  return name
end

function M.json_decode(s)
  local ok, v = pcall(cjson.decode, s)
  if not ok then error("not JSON: " .. tostring(s) .. " (" .. tostring(v) .. ")", 2) end
  return v
end

-- Lua pattern that matches the literal string s
function M.escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

---------------------------------------------------------------------------------------------------
-- processes (/proc)

-- Returns state letter, ppid of a process, or nil when there is no such process.
function M.proc_stat(pid)
  local s = M.read_file("/proc/" .. tostring(pid) .. "/stat")
  if not s then return nil end
  -- pid (comm) state ppid ... ; comm may contain spaces and parentheses: take the last ')'
  local rest = s:match("^.*%)%s+(.*)$")
  if not rest then return nil end
  local state, ppid = rest:match("^(%S+)%s+(%d+)")
  return state, tonumber(ppid)
end

-- A pid is alive when it exists and is not a zombie (an orphan reparented to an init that does not
-- reap stays a zombie; it no longer runs, listens or serves).
function M.alive(pid)
  local state = M.proc_stat(pid)
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function M.all_pids()
  local p = io.popen("ls /proc")
  local out = {}
  for name in p:lines() do
    if name:match("^%d+$") then out[#out + 1] = tonumber(name) end
  end
  p:close()
  return out
end

-- children of pid: { {pid=, state=} ... }
function M.children(pid)
  local out = {}
  for _, p in ipairs(M.all_pids()) do
    local state, ppid = M.proc_stat(p)
    if ppid == pid then out[#out + 1] = { pid = p, state = state } end
  end
  return out
end

function M.kill(pid, sig)
  return sh("kill -" .. (sig or "TERM") .. " " .. tonumber(pid) .. " 2>/dev/null")
end

-- True when the process looks like ours (guards against killing a recycled pid).
local function is_moonfork(pid)
  local cmd = (M.read_file("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ")
  local comm = M.read_file("/proc/" .. pid .. "/comm") or ""
  local base = M.BIN:match("([^/]+)$")
  return cmd:find(base, 1, true) ~= nil or comm:find(base:sub(1, 15), 1, true) ~= nil
    or cmd:find("moonfork", 1, true) ~= nil or comm:find("moonfork", 1, true) ~= nil
end

---------------------------------------------------------------------------------------------------
-- the server under test

local Server = {}
Server.__index = Server

local running = {}   -- servers started and not yet stopped
local open_conns = {} -- client connections, closed by stop_all

-- Spawns BIN with args (a list) in the background. Returns a Server whose pid is the master's pid.
-- Does not wait for anything but the pid file.
function M.spawn(args)
  local dir = M.mktempdir()
  local self = setmetatable({
    dir = dir, log = dir .. "/log", out = dir .. "/stdout",
    pidfile = dir .. "/pid", statusfile = dir .. "/status",
    args = args, workers = {}, known = {},
  }, Server)
  local argv = { M.shell_quote(M.BIN) }
  for _, a in ipairs(args) do argv[#argv + 1] = M.shell_quote(a) end
  write_file(self.log, "")
  local inner = table.concat(argv, " ") .. " </dev/null >" .. M.shell_quote(self.out)
    .. " 2>>" .. M.shell_quote(self.log) .. " & echo $! >" .. M.shell_quote(self.pidfile .. ".tmp")
    .. "; mv " .. M.shell_quote(self.pidfile .. ".tmp") .. " " .. M.shell_quote(self.pidfile)
    .. "; wait $!; echo $? >" .. M.shell_quote(self.statusfile .. ".tmp")
    .. "; mv " .. M.shell_quote(self.statusfile .. ".tmp") .. " " .. M.shell_quote(self.statusfile)
  assert(sh("( " .. inner .. " ) >/dev/null 2>&1 &"), "could not run sh")
  running[self] = true
  local pid = M.wait_for(function()
    local s = M.read_file(self.pidfile)
    return s and tonumber(s:match("%d+"))
  end)
  if not pid then
    running[self] = nil
    error("the wrapper shell never reported the pid of " .. M.BIN)
  end
  self.pid = pid
  self.known[pid] = true
  return self
end

-- Resolves a fixture name ("app" or "app.lua") to its path; paths with a "/" are kept.
function M.fixture(name)
  if name:find("/", 1, true) then return name end
  if not name:match("%.lua$") then name = name .. ".lua" end
  return M.FIXTURES .. "/" .. name
end

-- start(script, args[, opts]): runs `moonfork --port 0 ARGS FIXTURE` and, unless opts.wait == false,
-- waits for the "listening on" line and fills server.port and server.workers (list of pids, in the
-- order logged). On failure the process is killed and an error carrying the log is raised.
function M.start(script, args, opts)
  opts = opts or {}
  local argv = { "--port", "0" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = M.fixture(script)
  local self = M.spawn(argv)
  if opts.wait == false then return self end
  local ok, err = pcall(self.wait_listening, self, opts.timeout)
  if not ok then
    self:kill_all()
    error(err, 2)
  end
  return self
end

M.LISTENING = "listening on http://[^:%s]+:(%d+) with (%d+) workers? %(pids? ([%d, ]+)%)"

function Server:wait_listening(timeout)
  local text = self:wait_log(M.LISTENING, 1, timeout)
  local port, n, pids = text:match(M.LISTENING)
  self.port = tonumber(port)
  self.nworkers = tonumber(n)
  self.workers = {}
  for w in pids:gmatch("%d+") do
    self.workers[#self.workers + 1] = tonumber(w)
    self.known[tonumber(w)] = true
  end
  return self
end

function Server:log_text()
  return M.read_file(self.log) or ""
end

function Server:stdout_text()
  return M.read_file(self.out) or ""
end

-- Lines of the log that match a Lua pattern.
function Server:log_lines(pattern)
  local out = {}
  for line in self:log_text():gmatch("[^\n]+") do
    if not pattern or line:find(pattern) then out[#out + 1] = line end
  end
  return out
end

function Server:count_log(pattern)
  return #self:log_lines(pattern)
end

-- Waits until at least `count` (default 1) log lines match the Lua pattern; returns the count-th
-- matching line. Fails with the log text when the deadline passes, or at once if the master has
-- exited and the line is not there.
function Server:wait_log(pattern, count, timeout)
  count = count or 1
  local deadline = M.now() + (timeout or M.DEADLINE)
  while true do
    local exited = self:exited()
    local lines = self:log_lines(pattern)
    if #lines >= count then return lines[count] end
    if exited or M.now() > deadline then
      error(string.format("%s: log line /%s/ x%d not seen (got %d) within %ss; log:\n%s",
        exited and "master exited" or "timeout", pattern, count, #lines,
        tostring(timeout or M.DEADLINE), self:log_text()), 2)
    end
    socket.sleep(M.POLL)
  end
end

-- Pids mentioned in the log: "(pid N)", "pids A, B" and "[worker ID PID]".
function Server:logged_pids()
  local out = {}
  local text = self:log_text()
  for p in text:gmatch("%(pid (%d+)%)") do out[tonumber(p)] = true end
  for list in text:gmatch("%(pids ([%d, ]+)%)") do
    for p in list:gmatch("%d+") do out[tonumber(p)] = true end
  end
  for p in text:gmatch("%[worker %d+ (%d+)%]") do out[tonumber(p)] = true end
  for p in text:gmatch("%[master (%d+)%]") do out[tonumber(p)] = true end
  return out
end

-- Everything this server ever was: master, logged workers, current children of the master.
function Server:all_known_pids()
  for p in pairs(self:logged_pids()) do self.known[p] = true end
  if self.pid and not self:exited() then
    for _, c in ipairs(M.children(self.pid)) do self.known[c.pid] = true end
  end
  local list = {}
  for p in pairs(self.known) do list[#list + 1] = p end
  table.sort(list)
  return list
end

-- Exit status of the master (number; 128+N when killed by signal N), or nil while it runs.
function Server:exited()
  local s = M.read_file(self.statusfile)
  return s and tonumber(s:match("%d+"))
end

-- Waits for the master to exit; returns its status, or nil (after `timeout`) when it still runs.
function Server:exit_status(timeout)
  return M.wait_for(function() return self:exited() end, timeout)
end

function Server:signal(sig)
  return M.kill(self.pid, sig)
end

-- Waits until none of the pids is alive; returns true, or false and the survivors.
function M.wait_gone(pids, timeout)
  local ok = M.wait_for(function()
    for _, p in ipairs(pids) do if M.alive(p) then return false end end
    return true
  end, timeout)
  if ok then return true end
  local left = {}
  for _, p in ipairs(pids) do if M.alive(p) then left[#left + 1] = p end end
  return false, left
end

-- Stops master and workers: `sig` (default TERM) to the master, wait for it, then SIGKILL whatever
-- of master and workers is still alive. Always leaves nothing behind.
function Server:stop(sig, timeout)
  if not running[self] then return end
  local pids = self:all_known_pids()
  if not self:exited() then
    self:signal(sig or "TERM")
    self:exit_status(timeout or 5)
  end
  self:kill_all(pids)
end

-- SIGKILL to master and every known worker, then waits until they are gone.
function Server:kill_all(pids)
  pids = pids or self:all_known_pids()
  if not self:exited() then M.kill(self.pid, "KILL") end
  for _, p in ipairs(pids) do
    if p ~= self.pid and M.alive(p) and is_moonfork(p) then M.kill(p, "KILL") end
  end
  self:exit_status(10)
  M.wait_gone(pids, 10)
  running[self] = nil
  if not os.getenv("MOONFORK_SPEC_KEEP") then sh("rm -rf " .. M.shell_quote(self.dir)) end
end

-- Closes every client connection and stops every server still running. Used in after_each.
function M.stop_all()
  for c in pairs(open_conns) do c:close() end
  for s in pairs(running) do s:stop() end
end

---------------------------------------------------------------------------------------------------
-- background commands (wrk under reloads and scaling): started through sh so the pid is known,
-- stopped by pid

local background = {}

M.sh = sh

-- Starts argv in the background; returns { pid, out (its output file), ... } for bg_exited/bg_stop.
function M.bg_start(argv)
  local dir = M.mktempdir()
  local p = { dir = dir, out = dir .. "/out", pidfile = dir .. "/pid", statusfile = dir .. "/status" }
  local words = {}
  for i, a in ipairs(argv) do words[i] = M.shell_quote(a) end
  local q = M.shell_quote
  local inner = table.concat(words, " ") .. " </dev/null >" .. q(p.out) .. " 2>&1 & echo $! >" .. q(p.pidfile .. ".tmp")
    .. "; mv " .. q(p.pidfile .. ".tmp") .. " " .. q(p.pidfile) .. "; wait $!; echo $? >" .. q(p.statusfile .. ".tmp")
    .. "; mv " .. q(p.statusfile .. ".tmp") .. " " .. q(p.statusfile)
  assert(sh("( " .. inner .. " ) >/dev/null 2>&1 &"))
  p.pid = M.wait_for(function()
    local s = M.read_file(p.pidfile)
    return s and tonumber(s:match("%d+"))
  end, 10)
  assert(p.pid, "no pid for " .. argv[1])
  background[p] = true
  return p
end

-- Its exit status once it has exited, else nil.
function M.bg_exited(p)
  local s = M.read_file(p.statusfile)
  return s and tonumber(s:match("%d+"))
end

-- Sends `sig` and waits for the exit (SIGKILL if it does not come); returns the output.
function M.bg_stop(p, sig)
  if not M.bg_exited(p) then
    M.kill(p.pid, sig or "TERM")
    if not M.wait_for(function() return M.bg_exited(p) end, 15) then
      M.kill(p.pid, "KILL")
      M.wait_for(function() return M.bg_exited(p) end, 10)
    end
  end
  background[p] = nil
  local out = M.read_file(p.out) or ""
  sh("rm -rf " .. M.shell_quote(p.dir))
  return out
end

function M.bg_stop_all()
  for p in pairs(background) do M.bg_stop(p, "KILL") end
end

-- wrk comes from Debian's wrk package (tools/setup-deps installs it; a bare machine gets it here).
function M.ensure_wrk()
  if sh("command -v wrk >/dev/null 2>&1") then return end
  sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 || "
    .. "{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1; }")
  assert(sh("command -v wrk >/dev/null 2>&1"), "wrk is not installed and could not be (apt-get install wrk)")
end

---------------------------------------------------------------------------------------------------
-- one-shot command runs (CLI specs)

-- Runs BIN with args, waits for it to exit by itself. Returns status, stdout, stderr.
-- When it does not exit within the deadline it is killed and an error is raised.
function M.run(args, timeout)
  local s = M.spawn(args)
  local status = s:exit_status(timeout or M.DEADLINE)
  local out, err = s:stdout_text(), s:log_text()
  if not status then
    s:kill_all()
    error("moonfork " .. table.concat(args, " ") .. " did not exit by itself; stderr:\n" .. err, 2)
  end
  s:kill_all() -- nothing should be left, but workers could be: make sure
  return status, out, err
end

---------------------------------------------------------------------------------------------------
-- raw HTTP client

local Conn = {}
Conn.__index = Conn
M.Conn = Conn

-- connect(port[, host]) -> Conn, or nil, err
function M.connect(port, host)
  local sock = assert(socket.tcp())
  sock:settimeout(M.DEADLINE)
  local ok, err = sock:connect(host or "127.0.0.1", port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  local c = setmetatable({ sock = sock, buf = "", eof = false }, Conn)
  open_conns[c] = true
  return c
end

function Server:connect()
  assert(self.port, "server has no port (not listening?)")
  return assert(M.connect(self.port))
end

function Conn:close()
  if self.sock then
    self.sock:close()
    self.sock = nil
  end
  open_conns[self] = nil
end

-- Sends raw bytes. Returns true, or nil and the error (the peer may have closed).
function Conn:send(data)
  if not self.sock then return nil, "closed" end
  self.sock:settimeout(M.DEADLINE)
  local i = 1
  while i <= #data do
    local n, err, last = self.sock:send(data, i)
    if not n then return nil, err end
    i = n + 1
  end
  return true
end

-- Reads whatever arrives before `deadline` (absolute). Returns true when bytes were added,
-- false, "timeout" | "closed" otherwise.
function Conn:fill(deadline)
  if self.eof then return false, "closed" end
  if not self.sock then return false, "closed" end
  while true do
    local remaining = deadline - M.now()
    if not self.sock:dirty() then
      local r = socket.select({ self.sock }, nil, remaining > 0 and remaining or 0)
      if (not r or #r == 0) and M.now() >= deadline then return false, "timeout" end
    end
    self.sock:settimeout(0)
    local data, err, partial = self.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then
      self.buf = self.buf .. data
      if err and err ~= "timeout" then self.eof, self.eof_err = true, err end
      return true
    end
    if err and err ~= "timeout" then
      self.eof, self.eof_err = true, err
      return false, "closed"
    end
  end
end

local function deadline_of(timeout) return M.now() + (timeout or M.DEADLINE) end

-- Reads a CRLF- (or LF-) terminated line, without the terminator.
function Conn:read_line(deadline)
  while true do
    local i = self.buf:find("\n", 1, true)
    if i then
      local line = self.buf:sub(1, i - 1):gsub("\r$", "")
      self.buf = self.buf:sub(i + 1)
      return line
    end
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

function Conn:read_n(n, deadline)
  while #self.buf < n do
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
  local s = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return s
end

-- Reads until the peer closes. Returns all bytes read (with what was buffered), or nil, "timeout", bytes.
function Conn:read_until_close(timeout)
  local deadline = deadline_of(timeout)
  while true do
    local ok, err = self:fill(deadline)
    if not ok and err == "closed" then
      local s = self.buf
      self.buf = ""
      return s
    elseif not ok then
      return nil, err, self.buf
    end
  end
end

-- True when the connection is closed by the peer within `timeout` seconds and nothing else arrives
-- (buffered bytes count as "something else": returns false, "data", bytes).
function Conn:closed_by_peer(timeout)
  local rest, err = self:read_until_close(timeout)
  if not rest then return false, err end
  if #rest > 0 then return false, "data", rest end
  return true
end

-- Nothing has arrived yet (checked with a short wait of `timeout`, default 0.3 s) and the connection
-- is still open. A short wait is safe here: it can only make a test pass that should fail, never the
-- reverse, when the thing checked for is "nothing happened".
function Conn:quiet(timeout)
  if #self.buf > 0 then return false end
  local ok = self:fill(M.now() + (timeout or 0.3))
  return not ok and not self.eof
end

-- Parses one HTTP/1.x response from the connection.
-- opts.method: the request method (HEAD: no body); opts.timeout: seconds (default M.DEADLINE).
-- 1xx interim responses are returned as responses of their own (read again for the final one).
-- Returns resp = { version, status, reason, headers (lower-case name -> value, repeated ones joined
-- with ", "), header_list = {{name, value}}, body, chunked (bool), chunks (sizes), trailers }
-- or nil, err ("closed" when the peer closed before a whole response, "timeout", "bad response ...").
function Conn:receive(opts)
  opts = opts or {}
  local deadline = deadline_of(opts.timeout)
  local line, err = self:read_line(deadline)
  if not line then return nil, err end
  local version, status, reason = line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
  if not version then return nil, "bad status line: " .. line end
  local resp = { version = version, status = tonumber(status), reason = reason, headers = {},
    header_list = {}, body = "", chunked = false, chunks = {} }
  while true do
    local h, herr = self:read_line(deadline)
    if not h then return nil, herr end
    if h == "" then break end
    local name, value = h:match("^([^:%s]+):%s*(.-)%s*$")
    if not name then return nil, "bad header line: " .. h end
    resp.header_list[#resp.header_list + 1] = { name, value }
    local l = name:lower()
    resp.headers[l] = resp.headers[l] and (resp.headers[l] .. ", " .. value) or value
  end
  local st = resp.status
  if (st >= 100 and st < 200) or st == 204 or st == 304 or opts.method == "HEAD" then
    return resp
  end
  local te = resp.headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    resp.chunked = true
    local parts = {}
    while true do
      local sizeline, serr = self:read_line(deadline)
      if not sizeline then return nil, serr, resp end
      local hex = sizeline:match("^(%x+)")
      if not hex then return nil, "bad chunk size line: " .. sizeline, resp end
      local size = tonumber(hex, 16)
      resp.chunks[#resp.chunks + 1] = size
      if size == 0 then break end
      local data, derr = self:read_n(size, deadline)
      if not data then return nil, derr, resp end
      parts[#parts + 1] = data
      local crlf = self:read_line(deadline)
      if crlf ~= "" then return nil, "missing CRLF after chunk", resp end
    end
    resp.trailers = {}
    while true do
      local t, terr = self:read_line(deadline)
      if not t then return nil, terr, resp end
      if t == "" then break end
      resp.trailers[#resp.trailers + 1] = t
    end
    resp.body = table.concat(parts)
  elseif resp.headers["content-length"] then
    local n = tonumber(resp.headers["content-length"])
    if not n then return nil, "bad content-length", resp end
    local data, derr = self:read_n(n, deadline)
    if not data then return nil, derr, resp end
    resp.body = data
  else
    local data, derr = self:read_until_close(opts.timeout)
    if not data then return nil, derr, resp end
    resp.body = data
    resp.until_close = true
  end
  return resp
end

-- Builds the bytes of a request. headers: list of {name, value} (kept in order, repeats allowed)
-- or a map. Adds "Host: 127.0.0.1" unless given; adds Content-Length for a body unless a
-- Content-Length or Transfer-Encoding is given. opts.version: "1.1" (default) or "1.0".
function M.build_request(method, path, headers, body, opts)
  opts = opts or {}
  local list = {}
  if headers then
    if headers[1] then
      for _, h in ipairs(headers) do list[#list + 1] = h end
    else
      local names = {}
      for k in pairs(headers) do names[#names + 1] = k end
      table.sort(names)
      for _, k in ipairs(names) do list[#list + 1] = { k, headers[k] } end
    end
  end
  local has = {}
  for _, h in ipairs(list) do has[h[1]:lower()] = true end
  if not has.host then table.insert(list, 1, { "Host", "127.0.0.1" }) end
  if body and not has["content-length"] and not has["transfer-encoding"] then
    list[#list + 1] = { "Content-Length", tostring(#body) }
  end
  local out = { string.format("%s %s HTTP/%s\r\n", method, path, opts.version or "1.1") }
  for _, h in ipairs(list) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  out[#out + 1] = "\r\n"
  out[#out + 1] = body or ""
  return table.concat(out)
end

-- Sends a request on this connection and reads its response (see Conn:receive).
function Conn:request(method, path, headers, body, opts)
  opts = opts or {}
  local ok, err = self:send(M.build_request(method, path, headers, body, opts))
  if not ok then return nil, err end
  return self:receive({ method = method, timeout = opts.timeout })
end

-- One request on a new connection, which is then closed. Returns the response or nil, err.
function Server:request(method, path, headers, body, opts)
  local c = self:connect()
  local resp, err = c:request(method, path, headers, body, opts)
  c:close()
  return resp, err
end

function Server:get(path, headers)
  return self:request("GET", path, headers)
end

-- Encodes a body as chunked transfer coding, one chunk per element of `parts`.
function M.chunked(parts)
  local out = {}
  for _, p in ipairs(parts) do out[#out + 1] = string.format("%x\r\n%s\r\n", #p, p) end
  out[#out + 1] = "0\r\n\r\n"
  return table.concat(out)
end

---------------------------------------------------------------------------------------------------
-- environment and connection owners (chat and static specs)

-- start_env(script, args, env[, opts]): start() with extra environment variables (env: name -> value)
-- for the server. It runs the binary through a wrapper that does `exec env NAME=VALUE... BIN "$@"`,
-- so the pid the wrapper shell reports is still the master's.
function M.start_env(script, args, env, opts)
  local dir = M.mktempdir()
  local wrapper = dir .. "/moonfork"
  local names, words = {}, { "exec env" }
  for k in pairs(env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do words[#words + 1] = M.shell_quote(k .. "=" .. tostring(env[k])) end
  words[#words + 1] = M.shell_quote(M.BIN) .. ' "$@"'
  write_file(wrapper, "#!/bin/sh\n" .. table.concat(words, " ") .. "\n")
  assert(sh("chmod +x " .. M.shell_quote(wrapper)), "chmod " .. wrapper)
  local bin = M.BIN
  M.BIN = wrapper
  local ok, srv = pcall(M.start, script, args, opts)
  M.BIN = bin
  if not (opts and opts.wait == false) then sh("rm -rf " .. M.shell_quote(dir)) end
  if not ok then error(srv, 2) end
  return srv
end

-- The pid and worker id of the worker holding the server end of client connection `conn` (found
-- through /proc/net/tcp and the workers' fds), or nil while no worker has accepted it yet.
function M.worker_of(srv, conn)
  local _, cport = conn.sock:getsockname()
  cport = tonumber(cport)
  local inode
  if M.has_ss == nil then M.has_ss = sh("command -v ss >/dev/null 2>&1") end
  if M.has_ss then -- the kernel filters: /proc/net/tcp can be megabytes on a busy machine
    local p = io.popen(string.format("ss -Htne '( sport = :%d and dport = :%d )' 2>/dev/null", srv.port, cport))
    for ino in p:read("*a"):gmatch("ino:(%d+)") do
      if ino ~= "0" then inode = ino end
    end
    p:close()
  else
    local pat = string.format("\n%%s*%%d+: %%x+:%04X %%x+:%04X %%x+ %%x+:%%x+ %%x+:%%x+ %%x+%%s+%%d+%%s+%%d+%%s+(%%d+)",
      srv.port, cport)
    for ino in (M.read_file("/proc/net/tcp") or ""):gmatch(pat) do
      if ino ~= "0" then inode = ino end
    end
  end
  if not inode or inode == "0" then return nil end
  -- candidates: the workers the log names ready (no /proc scan and no fork: both slow under load)
  local ids = {}
  for wid, p in srv:log_text():gmatch("worker (%d+) %(pid (%d+)%) ready") do ids[tonumber(p)] = tonumber(wid) end
  local target = "socket:[" .. inode .. "]"
  local has_lfs, lfs = pcall(require, "lfs")
  for pid, id in pairs(ids) do
    local dir = "/proc/" .. pid .. "/fd"
    if has_lfs then
      local ok, found = pcall(function()
        for fd in lfs.dir(dir) do
          local a = lfs.symlinkattributes(dir .. "/" .. fd)
          if a and a.target == target then return true end
        end
      end)
      if ok and found then return pid, id end
    else
      local p = io.popen("ls -l " .. dir .. " 2>/dev/null")
      local fds = p:read("*a")
      p:close()
      if fds:find(target, 1, true) then return pid, id end
    end
  end
  return nil
end

-- The resident set size of a process in KiB (VmRSS in /proc/PID/status), or nil.
function M.rss_kib(pid)
  local s = M.read_file("/proc/" .. tostring(pid) .. "/status")
  return s and tonumber(s:match("VmRSS:%s*(%d+)"))
end


-- A free TCP port on 127.0.0.1 (bound and released at once: whoever binds it next gets it).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- How many descriptors process `pid` has open (/proc/PID/fd), or nil when it is gone.
function M.fd_count(pid)
  local p = io.popen("ls /proc/" .. tonumber(pid) .. "/fd 2>/dev/null")
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n > 0 and n or nil
end

-- "?k=v&..." of a table (sorted, percent-encoded), "" for none.
function M.query_string(params)
  local keys, out = {}, {}
  for k in pairs(params or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = tostring(params[k]):gsub("[^%w%-%._~/]", function(ch) return string.format("%%%02X", ch:byte()) end)
    out[#out + 1] = k .. "=" .. v
  end
  return #out > 0 and ("?" .. table.concat(out, "&")) or ""
end

---------------------------------------------------------------------------------------------------
-- JSON answers, test upstreams, status (the http_client, socket, pg, redis, reload, shared_dict specs)

-- GET path on srv (a Server: over a new connection) or on a Conn; the answer must be a 200: its body,
-- decoded.
function M.get_json(srv_or_conn, path)
  local resp, err = srv_or_conn:request("GET", path)
  if not resp then error("GET " .. path .. ": " .. tostring(err), 2) end
  if resp.status ~= 200 then error("GET " .. path .. ": status " .. resp.status .. ": " .. resp.body, 2) end
  return M.json_decode(resp.body)
end

-- Starts a luasocket upstream of spec/fixtures (http_upstream, tcp_upstream: upstream_base.lua) and
-- waits for its ports: { proc, port, full (a port whose accept queue is full), path (its Unix
-- socket), dir }. stop_upstream(up) kills it and removes dir.
function M.start_upstream(name)
  local dir = M.mktempdir()
  local info, path = dir .. "/info", dir .. "/up.sock"
  local p = M.bg_start({ "lua", M.FIXTURES .. "/" .. name .. ".lua", info, path })
  local line = M.wait_for(function() return M.read_file(info) end, 10)
  assert(line, "the upstream never wrote its ports")
  local port, full = line:match("(%d+) (%d+)")
  return { proc = p, port = tonumber(port), full = tonumber(full), path = path, dir = dir }
end

function M.stop_upstream(up)
  M.bg_stop(up.proc, "KILL")
  sh("rm -rf " .. M.shell_quote(up.dir))
end

-- The pids of the workers `moonfork status --json` (decoded) lists as ready, sorted.
function M.ready_pids(status)
  local out = {}
  for _, w in ipairs(status.workers) do
    if w.state == "ready" then out[#out + 1] = w.pid end
  end
  table.sort(out)
  return out
end

---------------------------------------------------------------------------------------------------
-- spec/fixtures/mesh_app.lua's commands (mesh_spec, mesh_cap_spec) run on the worker named by ?on=K,
-- relayed over the mesh when another worker took the connection.
-- Runs command `name` on worker `on` (nil: whichever accepts) over a new connection.
-- Returns the decoded result, or nil and why not (a relay that failed, a connection that broke).
function M.mesh_try_cmd(srv, on, name, params)
  local p = {}
  for k, v in pairs(params or {}) do p[k] = v end
  p.on = on
  local c, cerr = M.connect(srv.port)
  if not c then return nil, "connect: " .. tostring(cerr) end
  local resp, err = c:request("GET", "/" .. name .. M.query_string(p), { { "Connection", "close" } })
  c:close()
  if not resp then return nil, "request: " .. tostring(err) end
  if resp.status ~= 200 then return nil, resp.status .. " " .. resp.body end
  return M.json_decode(resp.body), resp.body
end

-- Like mesh_try_cmd, but the command must succeed (it is retried while the relay is not there yet).
function M.mesh_cmd(srv, on, name, params)
  local last
  local res = M.wait_for(function()
    local r, why = M.mesh_try_cmd(srv, on, name, params)
    if r and r.error == nil then return r end
    last = r and r.error or why
  end)
  assert(res, string.format("command %s on worker %s never succeeded: %s", name, tostring(on), tostring(last)))
  return res
end

---------------------------------------------------------------------------------------------------
-- reload and operations specs: editable copies of fixtures, live workers

M.write_file = write_file

-- Copies fixture `name` into a fresh temp dir (specs edit the copy, never the fixture); returns the
-- copy's path and the dir. The dir is world-readable (for --user).
function M.fixture_copy(name)
  local dir = M.mktempdir()
  assert(sh("chmod 755 " .. M.shell_quote(dir)))
  local path = dir .. "/" .. M.fixture(name):match("([^/]+)$")
  write_file(path, assert(M.read_file(M.fixture(name)), "no fixture " .. name))
  return path, dir
end

-- Replaces the first occurrence of the plain text `from` in the file by `to` (an error if absent).
function M.edit_file(path, from, to)
  local s = assert(M.read_file(path), "cannot read " .. path)
  local i, j = s:find(from, 1, true)
  assert(i, "'" .. from .. "' not found in " .. path)
  write_file(path, s:sub(1, i - 1) .. to .. s:sub(j + 1))
end

-- Pids of the live (not zombie) children of pid, sorted.
function M.live_children(pid)
  local out = {}
  for _, c in ipairs(M.children(pid)) do
    if c.state ~= "Z" and c.state ~= "X" then out[#out + 1] = c.pid end
  end
  table.sort(out)
  return out
end

-- ctl(path, timeout, CMD...): runs `moonfork CMD... --control PATH`; returns status, stdout, stderr.
function M.ctl(path, timeout, ...)
  local args = { ... }
  args[#args + 1] = "--control"
  args[#args + 1] = path
  return M.run(args, timeout)
end

-- conn_on(srv, id[, path]): a keep-alive connection held by worker `id`. New connections are
-- opened (each probed with GET or HEAD `path`, default "/") until one lands there; the ones that land
-- elsewhere stay open meanwhile, since workers share connections by count: a worker that already
-- holds more only gets the next one once the others hold as many.
function M.conn_on(srv, id, path, method)
  local others = {}
  local function release()
    for _, o in ipairs(others) do o:close() end
  end
  for _ = 1, 300 do
    local c = srv:connect()
    local r = assert(c:request(method or "GET", path or "/"))
    assert(r.status == 200, "probe answered " .. tostring(r.status))
    local _, wid = M.wait_for(function() return M.worker_of(srv, c) end, 5)
    if wid == id then
      release()
      return c
    end
    others[#others + 1] = c
  end
  release()
  error("no connection reached worker " .. tostring(id) .. "; log:\n" .. srv:log_text())
end

-- sse_reader(conn): reads a Server-Sent Events response as it arrives on conn. reader:read() takes
-- what is in conn.buf and returns the events completed since, each { id = number or nil, data =
-- string or nil (data lines joined by "\n"), comments = { ": ..." lines } }. reader.head is the
-- status line and headers once they have arrived; reader.ended is set when a chunked body ended.
local SseReader = {}
SseReader.__index = SseReader

function M.sse_reader(conn)
  return setmetatable({ conn = conn, body = "", ended = false }, SseReader)
end

function SseReader:read()
  local c, out = self.conn, {}
  if not self.head then
    local e = c.buf:find("\r\n\r\n", 1, true)
    if not e then return out end
    self.head = c.buf:sub(1, e - 1)
    c.buf = c.buf:sub(e + 4)
    self.chunked = self.head:lower():find("\r\ntransfer%-encoding: chunked") ~= nil
  end
  if self.chunked then
    while not self.ended do
      local le = c.buf:find("\r\n", 1, true)
      if not le then break end
      local size = tonumber(c.buf:sub(1, le - 1):match("^(%x+)") or "", 16)
      assert(size, "bad chunk size line: " .. c.buf:sub(1, le - 1))
      if size == 0 then
        self.ended = true
        c.buf = ""
        break
      end
      if #c.buf < le + 1 + size + 2 then break end
      self.body = self.body .. c.buf:sub(le + 2, le + 1 + size)
      c.buf = c.buf:sub(le + size + 4)
    end
  else
    self.body = self.body .. c.buf
    c.buf = ""
  end
  while true do
    local e = self.body:find("\n\n", 1, true)
    if not e then break end
    local block = self.body:sub(1, e - 1)
    self.body = self.body:sub(e + 2)
    local ev = { comments = {} }
    for line in block:gmatch("[^\n]+") do
      if line:sub(1, 1) == ":" then
        ev.comments[#ev.comments + 1] = line
      else
        local k, v = line:match("^(%w+): ?(.*)$")
        if k == "id" then ev.id = tonumber(v)
        elseif k == "data" then ev.data = ev.data and (ev.data .. "\n" .. v) or v end
      end
    end
    out[#out + 1] = ev
  end
  return out
end

-- run_clients(clients, cond, timeout): steps each client (cl:step() reads what has arrived without
-- blocking) until cond() holds (true) or `timeout` seconds pass (false), waiting on their sockets.
function M.run_clients(clients, cond, timeout)
  local deadline = M.now() + (timeout or 20)
  while true do
    for _, cl in ipairs(clients) do cl:step() end
    if cond() then return true end
    if M.now() > deadline then return false end
    local socks = {}
    for _, cl in ipairs(clients) do
      if not cl.closed and cl.conn.sock then socks[#socks + 1] = cl.conn.sock end
    end
    socket.select(socks, nil, 0.02)
  end
end

-- set_of(list): { [v] = true } for each value in list.
function M.set_of(list)
  local out = {}
  for _, v in ipairs(list) do out[v] = true end
  return out
end

return M
