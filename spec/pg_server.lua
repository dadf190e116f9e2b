-- spec/pg_server.lua: a throwaway PostgreSQL cluster (Debian's postgresql package) for the specs:
-- initdb in a temporary directory, the server on a free loopback port and a Unix socket in that
-- directory, started in the background and stopped by pid. PostgreSQL refuses to run as root: when
-- the specs run as root, initdb and postgres run as `nobody` (setpriv), in a directory it owns.
-- Ready means pg_isready says so, polled, never slept for.
--
--   local pg_server = require "spec.pg_server"
--   local pg = pg_server.start()                  -- pg.port, pg.dir (socket dir), pg.conninfo
--   pg_server.sql(pg, "CREATE TABLE t (x int)")   -- psql: its output (unaligned, tuples only) or nil, err
--   pg_server.restart(pg)                         -- same port, same data
--   pg_server.stop(pg)                            -- fast shutdown by pid, then the directory goes
local helpers = require "spec.helpers"

local M = {}

local q = helpers.shell_quote

-- The newest installed version's binaries (/usr/lib/postgresql/<version>/bin).
local function bin_dir()
  if os.getenv("PG_BIN") then return os.getenv("PG_BIN") end
  local p = io.popen("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1")
  local dir = p:read("*l")
  p:close()
  return dir
end

M.BIN = bin_dir()

local function is_root()
  local p = io.popen("id -u")
  local uid = p:read("*l")
  p:close()
  return uid == "0"
end

local AS_USER = is_root() and { "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups" } or {}

local function as_user(argv)
  local a = {}
  for _, x in ipairs(AS_USER) do a[#a + 1] = x end
  for _, x in ipairs(argv) do a[#a + 1] = x end
  return a
end

local function run(argv)
  local words = {}
  for i, a in ipairs(argv) do words[i] = q(a) end
  local p = io.popen(table.concat(words, " ") .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.-)rc=(%d+)%s*$")
  return tonumber(rc) == 0, body or out
end

-- True when a PostgreSQL server can be started here (the specs are skipped otherwise).
function M.available()
  return M.BIN ~= nil and helpers.sh("test -x " .. q(M.BIN .. "/postgres"))
end

-- sql(pg, text[, db]) -> psql's output (unaligned, tuples only, trailing newline removed), or nil, output
function M.sql(pg, text, db)
  local ok, out = run({ "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", pg.dir,
    "-p", tostring(pg.port), "-U", "postgres", "-d", db or "postgres", "-c", text })
  out = out:gsub("\n$", "")
  if not ok then return nil, out end
  return out
end

local function ready(pg)
  return helpers.sh("pg_isready -q -h " .. q(pg.dir) .. " -p " .. pg.port .. " -U postgres -d postgres")
end

local function launch(pg)
  pg.proc = helpers.bg_start(as_user({ M.BIN .. "/postgres", "-D", pg.data, "-p", tostring(pg.port),
    "-k", pg.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
    "-c", "synchronous_commit=off", "-c", "max_connections=100", "-c", "log_min_messages=fatal" }))
  local state = helpers.wait_for(function()
    if helpers.bg_exited(pg.proc) then return "exited" end
    return ready(pg) and "ready"
  end, 60)
  if state ~= "ready" then
    local out = helpers.bg_stop(pg.proc, "KILL")
    error("postgres did not start (" .. tostring(state) .. "): " .. out, 3)
  end
  pg.pid = pg.proc.pid
  return pg
end

-- start() -> pg: a new cluster (initdb) on a free port; pg.conninfo reaches it as user postgres.
function M.start()
  local dir = helpers.mktempdir()
  if #AS_USER > 0 then assert(helpers.sh("chown nobody:nogroup " .. q(dir))) end
  local pg = { dir = dir, data = dir .. "/data", port = helpers.free_port() }
  local ok, out = run(as_user({ M.BIN .. "/initdb", "-D", pg.data, "-U", "postgres", "--auth=trust",
    "--no-sync", "-E", "UTF8", "--locale=C" }))
  if not ok then
    helpers.sh("rm -rf " .. q(dir))
    error("initdb failed: " .. out, 2)
  end
  pg.conninfo = "host=" .. dir .. " port=" .. pg.port .. " user=postgres dbname=postgres"
  pg.tcp_conninfo = "host=127.0.0.1 port=" .. pg.port .. " user=postgres dbname=postgres"
  return launch(pg)
end

-- restart(pg): stops the server (fast shutdown, by pid) and starts it again on the same port and data.
function M.restart(pg)
  if pg.proc then helpers.bg_stop(pg.proc, "INT") end
  return launch(pg)
end

-- stop(pg): fast shutdown by pid (SIGINT; SIGKILL if it does not come), then the directory goes.
function M.stop(pg)
  if pg.proc then helpers.bg_stop(pg.proc, "INT") end
  pg.proc = nil
  helpers.sh("rm -rf " .. q(pg.dir))
end

return M
