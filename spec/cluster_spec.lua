-- spec/cluster_spec.lua: tools/cluster-demo, the cross-host set-up: two hosts in network namespaces
-- of their own, a redis-server they share, nginx in front. The set-up itself: both hosts answer
-- through nginx and reach Redis over their links; a host killed whole, or cut off, is routed around;
-- and `down` leaves nothing behind (namespaces, links, routes, processes).
local helpers = require "spec.helpers"
local socket = require "socket"

local cluster = require "spec.cluster"
local APP = helpers.FIXTURES .. "/cluster_app.lua"
local tool, read_env = cluster.tool, cluster.read_env

local function get(port, path)
  local c = socket.tcp()
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  local resp = c:receive("*a") or ""
  c:close()
  return tonumber(resp:match("^HTTP/1%.1 (%d+)")), resp:match("\r\n\r\n(.*)$")
end

-- which hosts answered n requests through nginx: a set of their Redis URLs
local function hosts_answering(env, n)
  local seen = {}
  for _ = 1, n do
    local status, body = get(tonumber(env.NGINX_PORT), "/")
    assert.are.equal(200, status, body)
    seen[body:match("^(%S+)")] = true
  end
  return seen
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function netns_list()
  local p = io.popen("ip netns list 2>/dev/null")
  local s = p:read("*a")
  p:close()
  return s
end

describe("tools/cluster-demo", function()
  local dir, env

  before_each(function()
    dir = helpers.mktempdir()
    local ok, out = tool(dir, "up", "--app", APP)
    assert(ok, "cluster-demo up failed:\n" .. out)
    env = read_env(dir)
  end)

  after_each(function()
    if env and env.ID then tool(dir, "down") end
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)

  it("puts two hosts behind nginx, each reaching Redis over its own link", function()
    assert.are.equal("http://127.0.0.1:" .. env.NGINX_PORT .. "/", env.URL)
    local seen = hosts_answering(env, 6)
    assert.is_true(seen["redis://10." .. env.OCTET .. ".1.1:" .. env.REDIS_PORT])
    assert.is_true(seen["redis://10." .. env.OCTET .. ".2.1:" .. env.REDIS_PORT])
    for _ = 1, 4 do
      local status, body = get(tonumber(env.NGINX_PORT), "/redis")
      assert.are.same({ 200, "+PONG" }, { status, body })
    end
  end)

  it("routes around a host killed whole, and takes it back when it starts again", function()
    assert(tool(dir, "host-kill", "1"))
    assert.are.equal("", (io.popen("ip netns pids " .. env.NS1):read("*a")))
    local seen = hosts_answering(env, 4)
    assert.are.equal(1, count(seen))
    assert.is_true(seen["redis://10." .. env.OCTET .. ".2.1:" .. env.REDIS_PORT])
    assert(tool(dir, "host-start", "1"))
    assert(helpers.wait_for(function() return count(hosts_answering(env, 2)) == 2 end, 20),
      "host 1 never answered again")
  end)

  it("routes around a host whose link is down, and takes it back when the link is up", function()
    assert(tool(dir, "link", "2", "down"))
    local seen = hosts_answering(env, 4)
    assert.are.equal(1, count(seen))
    assert.is_true(seen["redis://10." .. env.OCTET .. ".1.1:" .. env.REDIS_PORT])
    assert(tool(dir, "link", "2", "up"))
    assert(helpers.wait_for(function() return count(hosts_answering(env, 2)) == 2 end, 20),
      "host 2 never answered again")
  end)

  it("removes every namespace, link, route and process it made", function()
    local pids = { env.H1_PID, env.H2_PID, env.REDIS_PID, env.NGINX_PID }
    local ok, out = tool(dir, "down")
    assert(ok, out)
    local names = netns_list()
    assert.is_nil(names:find(env.NS1, 1, true))
    assert.is_nil(names:find(env.NS2, 1, true))
    local links = io.popen("ip -o link; ip route"):read("*a")
    assert.is_nil(links:find("mfc" .. env.ID, 1, true))
    assert.is_nil(links:find("10." .. env.OCTET .. ".", 1, true))
    for _, pid in ipairs(pids) do
      assert(helpers.wait_for(function() return not helpers.alive(tonumber(pid)) end, 10), "pid " .. pid .. " lives")
    end
    env = nil
  end)
end)
