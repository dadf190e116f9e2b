-- spec/lessons_spec.lua: the ways other servers hurt their users at shutdown (shared/LESSONS.md),
-- each shown not to happen here. Waits are bounded far below the --grace and timeouts given, so a
-- server that waited on the wrong thing fails the test instead of passing slowly.
local helpers = require "spec.helpers"
local socket = require "socket"

describe("lessons", function()
  after_each(function()
    helpers.stop_all()
  end)

  describe("graceful stop", function()
    it("is not held up by an idle keep-alive connection (nodejs/node#2642)", function()
      local srv = helpers.start("lessons_app", { "--workers", "1", "--grace", "300", "--keepalive-timeout", "300" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/")))
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      assert.is_nil(resp.headers["connection"]) -- kept alive, now idle
      assert.is_true(srv:signal("TERM"))
      assert.are.equal(0, srv:exit_status(60), "the master still runs 60 s after SIGTERM")
      assert.is_true(c:closed_by_peer(10), "the idle connection was not closed")
      assert.is_true(helpers.wait_gone(srv.workers))
    end)

    it("is not held up by a running interval timer (openresty/openresty#770)", function()
      local srv = helpers.start("lessons_app", { "--workers", "2", "--grace", "300" })
      assert.are.equal(200, assert(srv:get("/")).status)
      assert.is_true(srv:signal("TERM"))
      assert.are.equal(0, srv:exit_status(60), "the master still runs 60 s after SIGTERM")
      assert.are.equal(2, srv:count_log("drained; exiting"))
      assert.is_true(helpers.wait_gone(srv.workers))
    end)

    it("cuts a request that outlives --grace, then exits 0 (benoitc/gunicorn#2839)", function()
      local srv = helpers.start("lessons_app", { "--workers", "1", "--grace", "0.5", "--request-timeout", "300" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/hang")))
      srv:wait_log("hang request started")
      assert.is_true(srv:signal("TERM"))
      srv:wait_log("grace period over: closing 1 connection")
      assert.are.equal(0, srv:exit_status(60))
      assert.is_true(c:closed_by_peer(10))
      assert.is_true(helpers.wait_gone(srv.workers))
    end)

    it("answers an in-flight request with Connection: close, so the client does not reuse it", function()
      local srv = helpers.start("lessons_app", { "--workers", "1" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/slow?ms=300")))
      srv:wait_log("slow request started")
      assert.is_true(srv:signal("TERM"))
      srv:wait_log("stopping %(SIGTERM%)")
      local resp = assert(c:receive())
      assert.are.equal(200, resp.status)
      assert.are.equal("slow done", resp.body)
      assert.are.equal("close", resp.headers["connection"])
      assert.is_true(c:closed_by_peer(10))
      assert.are.equal(0, srv:exit_status(60))
    end)
  end)

  describe("sharing connections between workers", function()
    it("spreads a burst of connections evenly: no worker holds over 60% (Node's docs: 70% on 2 of 8)", function()
      local dir = helpers.mktempdir()
      local ctl = dir .. "/c.sock"
      local srv = helpers.start("lessons_app", { "--workers", "2", "--control", ctl, "--keepalive-timeout", "300",
        "--header-timeout", "300" })
      -- 400 connections opened as fast as they go, none sending anything: they stay open
      local socks = {}
      for i = 1, 400 do
        local s = socket.tcp()
        s:settimeout(0)
        s:connect("127.0.0.1", srv.port)
        socks[i] = s
      end
      local counts
      local ok = helpers.wait_for(function()
        local status, out = helpers.ctl(ctl, nil, "status", "--json")
        if status ~= 0 then return false end
        counts = {}
        local total = 0
        for n in out:gmatch('"connections":(%d+)') do
          counts[#counts + 1] = tonumber(n)
          total = total + tonumber(n)
        end
        return total == 400
      end, 30)
      for _, s in ipairs(socks) do s:close() end
      assert.is_true(ok, "the workers never held all 400 connections")
      assert.are.equal(2, #counts)
      for i, n in ipairs(counts) do
        assert.is_true(n <= 240, string.format("worker %d holds %d of 400 connections", i, n))
      end
    end)
  end)

  describe("memory", function()
    it("is given back once a crowd of connections has gone", function()
      local srv = helpers.start("lessons_app", { "--workers", "1", "--keepalive-timeout", "300" })
      local worker = srv.workers[1]
      local base = helpers.rss_kib(worker)
      local dir = helpers.mktempdir()
      local out, marker = dir .. "/out", dir .. "/release"
      local pid = tonumber(io.popen(string.format(
        "sh -c 'ulimit -n 8192 2>/dev/null; exec lua %s %d 4000 %s' > %s 2>&1 & echo $!",
        helpers.fixture("crowd_client"), srv.port, marker, out)):read("*l"))
      finally(function()
        io.open(marker, "w"):close()
        helpers.kill(pid, "KILL")
      end)
      assert.is_truthy(helpers.wait_for(function()
        return (helpers.read_file(out) or ""):find("held 4000", 1, true)
      end, 60), "the client never held its connections: " .. tostring(helpers.read_file(out)))
      local peak = helpers.rss_kib(worker)
      -- (an idle keep-alive connection costs under 0.5 KB: README, "What a connection costs"; 4,000 of
      -- them, so that the crowd outweighs what a worker keeps for itself, its pools, at any base)
      assert.is_true(peak > base + 512, string.format("4,000 connections took only %d KiB", peak - base))
      io.open(marker, "w"):close() -- the crowd leaves
      local after
      local ok = helpers.wait_for(function()
        after = helpers.rss_kib(worker)
        return after < base + (peak - base) / 2
      end, 20)
      assert.is_true(ok, string.format("RSS %d KiB before, %d with the crowd, still %d after it left", base,
        peak, after))
    end)
  end)

  describe("the master's death", function()
    it("takes the workers with it, even when they are busy (nodejs/node#5872)", function()
      local srv = helpers.start("lessons_app", { "--workers", "2", "--grace", "0.5", "--request-timeout", "300" })
      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/hang")))
      srv:wait_log("hang request started")
      assert.is_true(srv:signal("KILL"))
      local gone, left = helpers.wait_gone(srv.workers, 60)
      assert.is_true(gone, "workers left behind: " .. table.concat(left or {}, ", "))
    end)
  end)
end)
