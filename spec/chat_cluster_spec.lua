-- spec/chat_cluster_spec.lua: the chat across two hosts (tools/cluster-demo: two network namespaces,
-- a redis-server with its append-only file on, nginx in front), broken on purpose. SSE readers connect
-- through nginx (so they spread over both hosts) and reconnect by themselves with Last-Event-ID, as
-- browsers do; a poster sends each message with a key of its own and, like the page, sends it again
-- with the same key when the answer is lost or 5xx. After each fault every reader must hold exactly the
-- stream's entries, in order (no gap, no duplicate), and every acknowledged id must be among them.
local helpers = require "spec.helpers"
local sse = require "spec.sse_client"

local CHAT = helpers.ROOT .. "/examples/chat/server.lua"
local HOST = "127.0.0.1"

local cluster = require "spec.cluster"
local command, tool, read_env = cluster.command, cluster.tool, cluster.read_env

local function sh_out(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  local s = p:read("*a")
  p:close()
  return s
end

-- SSE connections host n holds (established, on its port 8080)
local function streams_on(env, n)
  local out = sh_out("ip netns exec " .. env["NS" .. n] .. " ss -Htn state established '( sport = :8080 )'")
  local c = 0
  for _ in out:gmatch("[^\n]+") do c = c + 1 end
  return c
end

local function stream_ids(env)
  local out = sh_out("redis-cli -p " .. env.REDIS_PORT .. " XRANGE moonfork:chat - +")
  local ids = {}
  for id in out:gmatch("(%d+%-%d+)\n") do ids[#ids + 1] = id end
  return ids
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

describe("the chat across two hosts", function()
  local dir, env, readers, acked, counter

  before_each(function()
    dir = helpers.mktempdir()
    local ok, out = tool(dir, "up", "--app", CHAT, "--", "--workers", "2")
    assert(ok, "cluster-demo up failed:\n" .. out)
    env = read_env(dir)
    readers, acked, counter = {}, {}, 0
  end)

  after_each(function()
    for _, rd in ipairs(readers or {}) do sse.close(rd) end
    if env and env.ID then tool(dir, "down") end
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)

  local port = function() return tonumber(env.NGINX_PORT) end

  -- n readers through nginx, each connected (its response head read)
  local function open_readers(n)
    for _ = 1, n do readers[#readers + 1] = sse.open(HOST, port(), { since = "0" }) end
    assert.is_true(sse.pump(readers, function()
      for _, rd in ipairs(readers) do if #rd.statuses == 0 then return false end end
      return true
    end, 20), "the readers' streams did not open")
  end

  -- One message, sent again with its key until it is acknowledged; its id is kept in `acked`.
  local function post(text)
    counter = counter + 1
    local key = "spec-" .. counter
    local id
    assert(helpers.wait_for(function()
      local status, body = sse.post(HOST, port(), { user = "spec", text = text, key = key })
      if status == 201 then id = body.id end
      return id ~= nil
    end, 60), "the post " .. text .. " was never acknowledged")
    acked[#acked + 1] = id
    return id
  end

  -- every reader holds exactly the stream's entries, and every acknowledged id is one of them
  local function all_delivered()
    local want = stream_ids(env)
    local ok = sse.pump(readers, function()
      for _, rd in ipairs(readers) do if not same_list(sse.ids(rd), want) then return false end end
      return true
    end, 60)
    local why = ""
    for i, rd in ipairs(readers) do
      if not same_list(sse.ids(rd), want) then
        why = why .. "\nreader " .. i .. " has " .. table.concat(sse.ids(rd), " ") .. "\n  stream: " .. table.concat(want, " ")
      end
    end
    assert(ok, "a reader does not hold exactly the stream's entries:" .. why)
    local in_stream = {}
    for _, id in ipairs(want) do in_stream[id] = true end
    for _, id in ipairs(acked) do assert(in_stream[id], "acknowledged id " .. id .. " is not in the stream") end
    assert.is_true(sse.ascending(want))
    return want
  end

  it("gives every message exactly once, in order, to the readers of a host SIGKILLed during traffic", function()
    open_readers(6)
    assert.is_true(streams_on(env, 1) > 0, "host 1 holds no stream: nothing would be tested")
    for i = 1, 5 do post("before " .. i) end
    -- the kill runs in the background while posts go on
    os.execute(command(dir, "host-kill", "1") .. " >/dev/null 2>&1 &")
    local i = 0
    repeat
      i = i + 1
      post("during " .. i)
    until sh_out("ip netns pids " .. env.NS1) == "" and i >= 3
    for j = 1, 5 do post("after " .. j) end
    local got = all_delivered()
    assert.equal(#acked, #got) -- each post (retried or not) stored once
    local moved = 0
    for _, rd in ipairs(readers) do if rd.connects > 1 then moved = moved + 1 end end
    assert.is_true(moved > 0, "no reader had to reconnect")
  end)

  it("answers 503 while Redis is down, loses nothing acknowledged, and readers see no gap or duplicate", function()
    open_readers(4)
    for i = 1, 3 do post("before " .. i) end
    assert(tool(dir, "redis-kill"))
    local status, body = sse.post(HOST, port(), { user = "spec", text = "during", key = "outage" })
    assert.equal(503, status)
    assert.is_table(body, "the 503's body is not JSON")
    assert.matches("Redis", body.error)
    assert.matches("not acknowledged", body.error)
    assert(tool(dir, "redis-start"))
    post("during") -- (the same text, a new key: the first was never acknowledged)
    for i = 1, 3 do post("after " .. i) end
    all_delivered()
  end)

  it("(tools/cluster-demo) down stops nginx's workers too, not only its master", function()
    local kids = sh_out("pgrep -P " .. env.NGINX_PID)
    assert.matches("%d", kids, nil, "nginx has no worker")
    assert(tool(dir, "down"))
    env = nil
    for pid in kids:gmatch("%d+") do
      assert(helpers.wait_for(function() return not helpers.alive(tonumber(pid)) end, 10), "nginx worker " .. pid .. " lives")
    end
  end)

  it("catches a host up from the stream when its link comes back, and its readers miss nothing", function()
    open_readers(6)
    assert.is_true(streams_on(env, 2) > 0, "host 2 holds no stream: nothing would be tested")
    for i = 1, 3 do post("before " .. i) end
    assert(tool(dir, "link", "2", "down"))
    for i = 1, 5 do post("cut off " .. i) end -- (all through host 1)
    -- cut off long enough for host 2's reader to give its XREAD up (not just a retransmission later)
    assert(helpers.wait_for(function()
      return (helpers.read_file(env.H2_LOG) or ""):find("chat: reading the stream failed", 1, true)
    end, 60), "host 2's reader never noticed the cut")
    post("cut off 6")
    assert(tool(dir, "link", "2", "up"))
    for i = 1, 3 do post("after " .. i) end
    all_delivered()
    assert.matches("chat: reading the stream again from %d+%-%d+", helpers.read_file(env.H2_LOG))
  end)
end)
