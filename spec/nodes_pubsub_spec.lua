-- spec/nodes_pubsub_spec.lua: nodes:publish / nodes:subscribe reach every subscribed worker of every
-- host that shares a Redis (--redis URL), on one host and on the two hosts of tools/cluster-demo.
local helpers = require "spec.helpers"
local redis_server = require "spec.redis_server"
local cluster = require "spec.cluster"

local function get_json(port, path)
  local c = assert(helpers.connect(port))
  local resp = assert(c:request("GET", path))
  c:close()
  return resp.status, helpers.json_decode(resp.body)
end

-- publishes m1, m2, ... until one reaches `want` workers (subscriptions made at the top of the script
-- are confirmed a little after start): the text of that one
local function publish_until(port, want, tag)
  local i, text = 0, nil
  assert(helpers.wait_for(function()
    i = i + 1
    text = tag .. "-" .. i
    local status, got = get_json(port, "/publish?m=" .. text)
    assert.are.equal(200, status)
    return got.n == want
  end, 20), "no publish reached " .. want .. " workers")
  return text
end

describe("nodes:publish / nodes:subscribe", function()
  local r

  setup(function() r = redis_server.start() end)
  teardown(function() redis_server.stop(r) end)
  after_each(function() helpers.stop_all() end)

  it("reach every subscribed worker of the host, the publisher's own too", function()
    local srv = helpers.start("pubsub_app", { "--workers", "2", "--redis", "redis://127.0.0.1:" .. r.port })
    local text = publish_until(srv.port, 2, "one")
    srv:wait_log("got news: " .. helpers.escape_pattern(text) .. " in worker 1")
    srv:wait_log("got news: " .. helpers.escape_pattern(text) .. " in worker 2")
  end)

  it("reach the workers of another server on the same Redis, and only subscribers", function()
    local url = "redis://127.0.0.1:" .. r.port
    local a = helpers.start("pubsub_app", { "--workers", "2", "--redis", url })
    local b = helpers.start("pubsub_app", { "--workers", "1", "--redis", url })
    local text = publish_until(b.port, 3, "two")
    a:wait_log("got news: " .. helpers.escape_pattern(text) .. " in worker 1")
    a:wait_log("got news: " .. helpers.escape_pattern(text) .. " in worker 2")
    b:wait_log("got news: " .. helpers.escape_pattern(text) .. " in worker 1")
    local _, got = get_json(a.port, "/publish?channel=nobody&m=x")
    assert.are.equal(0, got.n)
  end)

  it("say how to give a Redis when there is none", function()
    local srv = helpers.start("pubsub_app", { "--workers", "1" })
    local _, pub = get_json(srv.port, "/publish?m=x")
    assert.are.same({ n = false, err = "no Redis: start with --redis URL or listen{ redis = URL }" }, pub)
    local _, sub = get_json(srv.port, "/subscribe")
    assert.are.same({ ok = false, err = "no Redis: start with --redis URL or listen{ redis = URL }" }, sub)
  end)

  it("refuse a --redis that is not a redis:// URL", function()
    local status, _, err = helpers.run({ "--redis", "http://127.0.0.1:6379", helpers.fixture("pubsub_app") })
    assert.are_not.equal(0, status)
    assert.truthy(err:find("bad value for redis: 'http://127.0.0.1:6379' (a URL: redis://host:port)", 1, true), err)
  end)
end)

describe("nodes:publish / nodes:subscribe across the two hosts of tools/cluster-demo", function()
  local dir, env

  before_each(function()
    dir = helpers.mktempdir()
    local ok, out = cluster.tool(dir, "up", "--app", helpers.FIXTURES .. "/pubsub_app.lua", "--", "--workers", "2")
    assert(ok, "cluster-demo up failed:\n" .. out)
    env = cluster.read_env(dir)
  end)

  after_each(function()
    cluster.tool(dir, "down")
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)

  it("reach every worker of both hosts, whichever host published", function()
    local text = publish_until(tonumber(env.NGINX_PORT), 4, "hosts")
    for _, log in ipairs({ env.H1_LOG, env.H2_LOG }) do
      for w = 1, 2 do
        local line = "got news: " .. helpers.escape_pattern(text) .. " in worker " .. w
        assert(helpers.wait_for(function() return (helpers.read_file(log) or ""):find(line) end, 10),
          log .. " has no '" .. line .. "'")
      end
    end
  end)
end)
