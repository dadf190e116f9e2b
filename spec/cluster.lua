-- spec/cluster.lua: driving tools/cluster-demo from the specs (two hosts in network namespaces, a
-- shared redis-server, nginx in front).
--
--   local cluster = require "spec.cluster"
--   local ok, out = cluster.tool(dir, "up", "--app", APP, "--", "--workers", "2")
--   local env = cluster.read_env(dir)      -- cluster.env as a table: URL, NS1, H1_LOG, REDIS_PORT, ...
local helpers = require "spec.helpers"

local M = {}

M.TOOL = helpers.ROOT .. "/tools/cluster-demo"

-- The shell command for `tools/cluster-demo --dir DIR ARGS...` (--dir first: ARGS may hold a "--").
function M.command(dir, ...)
  local words = { helpers.shell_quote(M.TOOL), "--dir", helpers.shell_quote(dir) }
  for _, a in ipairs({ ... }) do words[#words + 1] = helpers.shell_quote(a) end
  return "MOONFORK_BIN=" .. helpers.shell_quote(helpers.BIN) .. " " .. table.concat(words, " ")
end

-- Runs it: true when it exited 0, and what it printed.
function M.tool(dir, ...)
  local p = io.popen(M.command(dir, ...) .. " 2>&1")
  local out = p:read("*a")
  return p:close(), out
end

function M.read_env(dir)
  local env = {}
  for line in (helpers.read_file(dir .. "/cluster.env") or ""):gmatch("[^\n]+") do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then env[k] = v end
  end
  return env
end

return M
