-- spec/shared_dict_spec.lua: moonfork.shared, the shared-memory dicts (server/shdict*.c,
-- lua/moonfork/shared.lua) end to end: OpenResty's ngx.shared.DICT API, atomic across workers, alive
-- across worker crashes, reloads and scaling, a worker SIGKILLed mid-operation in a loop never stalls
-- the others, a long mixed-size run never fails from fragmentation, and `moonfork status` shows them.
--
-- The app is spec/fixtures/shared_app.lua: POST /run runs Lua with the dicts in scope.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local null = cjson.null

local function stop_everything() helpers.stop_all() end

local function start(workers, extra, env)
  local path = helpers.mktempdir() .. "/control.sock"
  local args = { "--workers", tostring(workers or 2), "--control", path }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local srv
  if env then srv = helpers.start_env("shared_app", args, env) else srv = helpers.start("shared_app", args) end
  return srv, path
end

-- Runs `code` in a worker (on conn, or a new connection); returns the values it returned (nil for null).
local function run(target, code)
  local resp = assert(target:request("POST", "/run", nil, code))
  assert.equal(200, resp.status, resp.body)
  local r = cjson.decode(resp.body)
  assert(r.error == nil, r.error)
  local out = {}
  for i = 1, r.n do
    local v = r.values[i]
    if v == null then v = nil end
    out[i] = v
  end
  return out, r.n
end

local function status_json(path)
  local st, out, err = helpers.ctl(path, 30, "status", "--json")
  assert.equal(0, st, err)
  return helpers.json_decode(out)
end

local function dict_status(path, name)
  for _, d in ipairs(status_json(path).shared or {}) do
    if d.name == name then return d end
  end
end

local function ready_pids(path) return helpers.ready_pids(status_json(path)) end

describe("shared dicts", function()
  local srv, ctl
  setup(function() srv, ctl = start(2) end)
  teardown(stop_everything)

  describe("get and set", function()
    it("stores strings, numbers and booleans with flags, and gives nil for a missing key", function()
      local r = run(srv, [[
        d:flush_all() d:flush_expired()
        local a = { d:set("s", "text", 0, 7) }
        d:set("n", 4.25) d:set("b", false)
        local s, f = d:get("s")
        return a[1], a[2], a[3], s, f, d:get("n"), d:get("b"), d:get("missing") ]])
      assert.same({ true, nil, false, "text", 7, 4.25, false, nil }, r)
    end)

    it("deletes with delete() and with set(key, nil)", function()
      local r = run(srv, [[ d:set("x", 1) d:set("y", 2) d:delete("x") d:set("y", nil)
        return d:get("x"), d:get("y") ]])
      assert.same({}, r)
    end)

    it("answers bad keys and values as OpenResty does", function()
      local r = run(srv, [[ return select(2, d:get(nil)), select(2, d:get("")), select(2, d:set(("k"):rep(65536), 1)),
        select(2, d:set("t", {})), pcall(d.set, d, "k", 1, 0 / 0), d:set("far", 1, 1e300), d:ttl("far") > 1e9,
        select(2, pcall(d.set, d, "k", 1, -1)) ]])
      assert.same({ "nil key", "empty key", "key too long", "bad value type", false, true, true }, { unpack(r, 1, 7) })
      assert.matches('bad "exptime" argument', r[8])
    end)

    it("keeps a value of 1 MB minus a little, and a key of 64 KiB", function()
      local r = run(srv, [[ local v = ("v"):rep(900000) local k = ("k"):rep(65535)
        local ok = d:set(k, v) local got = d:get(k) d:delete(k) return ok, got == v ]])
      assert.same({ true, true }, r)
    end)

    it("is nil for a dict listen() did not declare", function()
      assert.same({ true }, run(srv, [[ return moonfork.shared.nope == nil ]]))
    end)
  end)

  describe("add, replace, safe_set and eviction", function()
    it("add fails with 'exists' and replace with 'not found'", function()
      local r = run(srv, [[ d:delete("a") local x = { d:add("a", 1) } local y = { d:add("a", 2) }
        local z = { d:replace("a", 3) } local w = { d:replace("none", 1) }
        return x[1], y[1], y[2], z[1], d:get("a"), w[1], w[2], select(2, d:safe_add("a", 1)) ]])
      assert.same({ true, false, "exists", true, 3, false, "not found", "exists" }, r)
    end)

    it("set evicts the least recently used entries and says forcible; safe_set says 'no memory'", function()
      local r = run(srv, [[
        small:flush_all() small:flush_expired()
        local v, i, forcible = ("x"):rep(1000), 0, false
        while not forcible do
          i = i + 1
          if i == 5 then small:get("k1") end -- k1 is recent now: k2 goes first
          local ok, err
          ok, err, forcible = small:set("k" .. i, v)
          assert(ok, err)
        end
        local s = { small:safe_set("another", v) }
        return small:get("k1") ~= nil, small:get("k2") == nil, s[1], s[2] ]])
      assert.same({ true, true, false, "no memory" }, r)
    end)
  end)

  describe("expiry", function()
    it("expires with millisecond precision; get_stale still sees the value", function()
      run(srv, [[ d:set("e", "soon", 0.05) d:set("forever", 1, 0) ]])
      local r = run(srv, [[ local t = d:ttl("e") return t > 0 and t <= 0.05, d:ttl("forever") ]])
      assert.same({ true, 0 }, r)
      assert(helpers.wait_for(function() return run(srv, [[ return d:get("e") == nil ]])[1] end))
      r = run(srv, [[ local v, f, stale = d:get_stale("e") return v, f, stale, select(2, d:ttl("e")) ]])
      assert.same({ "soon", nil, true, "not found" }, r)
    end)

    it("expire sets a new time to live; flush_expired removes expired entries", function()
      run(srv, [[ d:flush_all() d:flush_expired() d:set("a", 1) d:set("b", 2) d:set("c", 3) d:expire("a", 0.001) d:expire("b", 0.001) ]])
      assert(helpers.wait_for(function() return run(srv, [[ return d:get("a") == nil and d:get("b") == nil ]])[1] end))
      local r = run(srv, [[ return d:flush_expired(), d:get("c"), select(2, d:expire("zz", 1)) ]])
      assert.same({ 2, 3, "not found" }, r)
    end)
    it("flush_all expires every entry: get misses, get_stale still sees it, flush_expired frees it", function()
      local r = run(srv, [[ small:set("f", "x") small:flush_all()
        local a, b = small:get("f"), select(3, small:get_stale("f")) small:flush_expired()
        return a, b, small:get_stale("f") ]])
      assert.same({ nil, true, nil }, r)
    end)
  end)

  describe("incr", function()
    it("adds, starts at init with init_ttl, and refuses what is not a number", function()
      local r = run(srv, [[ d:delete("c") d:set("s", "str")
        local a = { d:incr("c", 1) } local b = d:incr("c", 5, 10, 100) local c = d:incr("c", -0.5)
        local e = { d:incr("s", 1) }
        return a[1], a[2], b, c, d:ttl("c") > 99, e[1], e[2] ]])
      assert.same({ nil, "not found", 15, 14.5, true, nil, "not a number" }, r)
    end)

    it("is atomic across workers: two workers at once lose no increment", function()
      local c1 = helpers.conn_on(srv, 1, "/pid")
      local c2 = helpers.conn_on(srv, 2, "/pid")
      run(c1, [[ d:delete("hits") ]])
      local code = [[ for i = 1, 20000 do d:incr("hits", 1, 0) end return moonfork.id ]]
      local req = helpers.build_request("POST", "/run", nil, code)
      assert(c1:send(req))
      assert(c2:send(req))
      local r1, r2 = assert(c1:receive()), assert(c2:receive())
      assert.equal(200, r1.status)
      assert.equal(200, r2.status)
      assert.same({ 40000 }, run(c1, [[ return d:get("hits") ]]))
      c1:close()
      c2:close()
    end)
  end)

  describe("lists", function()
    it("pushes and pops at both ends and counts", function()
      local r = run(srv, [[ d:delete("l")
        local a = d:lpush("l", "b") local b = d:lpush("l", "a") local c = d:rpush("l", 3)
        return a, b, c, d:llen("l"), d:lpop("l"), d:rpop("l"), d:rpop("l"), d:rpop("l"), d:llen("l") ]])
      assert.same({ 1, 2, 3, 3, "a", 3, "b", nil, 0 }, r)
    end)

    it("says 'value not a list' and 'value is a list'", function()
      local r = run(srv, [[ d:set("str", "x") d:delete("lst") d:rpush("lst", 1)
        return select(2, d:lpush("str", 1)), select(2, d:get("lst")), select(2, d:llen("str")) ]])
      assert.same({ "value not a list", "value is a list", "value not a list" }, r)
    end)
  end)

  describe("get_keys, capacity and free_space", function()
    it("lists up to max keys (default 1024, 0 = all)", function()
      local r = run(srv, [[ d:flush_all() d:flush_expired() for i = 1, 1500 do d:set("k" .. i, i) end
        d:set("gone", 1, 0.001) moonfork.sleep(5)
        local all = d:get_keys(0) local seen = {} for _, k in ipairs(all) do seen[k] = true end
        return #d:get_keys(), #d:get_keys(10), #all, seen.k1 and seen.k1500 and not seen.gone ]])
      assert.same({ 1024, 10, 1500, true }, r)
    end)

    it("reports the size listen() gave and the free bytes", function()
      local r = run(srv, [[ small:flush_all() small:flush_expired() local f0 = small:free_space() small:set("k", ("v"):rep(500))
        return small:capacity(), f0 > 60000, small:free_space() < f0 ]])
      assert.same({ 65536, true, true }, r)
    end)
  end)

  describe("memory", function()
    -- OpenResty's complaint: "no memory" from fragmentation while plenty is free. A long run of
    -- mixed sizes (16 B .. 8 KiB) with deletes: safe_set must never fail while free_space is at
    -- least three times what the value needs.
    it("never says 'no memory' from fragmentation in a long mixed-size run", function()
      local r = run(srv, [[
        d:flush_all() d:flush_expired()
        local val, fails, oks = ("m"):rep(8192), 0, 0
        math.randomseed(7)
        for i = 1, 100000 do
          local n = math.random(4) == 1 and math.random(16, 8192) or math.random(16, 300)
          local k = "m" .. math.random(400)
          local enough = d:free_space() >= 3 * (n + #k + 64)
          local ok, err = d:safe_set(k, val:sub(1, n))
          if ok then oks = oks + 1 elseif enough and err == "no memory" then fails = fails + 1 end
          if math.random(3) == 1 then d:delete("m" .. math.random(400)) end
        end
        return fails, oks ]])
      assert.equal(0, r[1])
      assert(r[2] > 50000, "only " .. r[2] .. " sets went in")
    end)
  end)

  describe("moonfork status", function()
    it("shows each dict's capacity, bytes used and keys, in the JSON and the table", function()
      run(srv, [[ small:flush_all() small:flush_expired() small:set("one", 1) small:set("two", 2) ]])
      local s = dict_status(ctl, "small")
      assert.equal(65536, s.capacity)
      assert.equal(2, s.keys)
      assert(s.used > 0 and s.used + s.free <= s.capacity)
      local st, out = helpers.ctl(ctl, 30, "status")
      assert.equal(0, st)
      assert.matches("shared dict%s+capacity%s+used%s+free%s+keys", out)
      assert.matches("\nsmall%s+64%.0k%s+[%d.]+k%s+[%d.]+k%s+2%s", out)
    end)
  end)
end)

describe("shared dicts outlive workers", function()
  after_each(stop_everything)

  it("keep their data across a worker's crash, a reload and scaling up", function()
    local srv, ctl = start(2)
    run(srv, [[ d:set("kept", "yes") ]])
    local before = ready_pids(ctl)
    helpers.kill(before[1], "KILL")
    assert(helpers.wait_for(function()
      local p = ready_pids(ctl)
      return #p == 2 and p[1] ~= before[1] and p[2] ~= before[1]
    end))
    for _ = 1, 4 do assert.same({ "yes" }, run(srv, [[ return d:get("kept") ]])) end
    local st = helpers.ctl(ctl, 120, "reload")
    assert.equal(0, st)
    for _ = 1, 4 do assert.same({ "yes" }, run(srv, [[ return d:get("kept") ]])) end
    assert.equal(0, (helpers.ctl(ctl, 60, "scale", "3")))
    assert(helpers.wait_for(function() return #ready_pids(ctl) == 3 end))
    local c3 = helpers.conn_on(srv, 3, "/pid")
    assert.same({ "yes" }, run(c3, [[ return d:get("kept") ]]))
    c3:close()
  end)

  it("keep their size at a reload that changes it, saying it applies at the next restart; a new one appears", function()
    local path = helpers.fixture_copy("shared_app")
    local ctl = helpers.mktempdir() .. "/control.sock"
    local srv = helpers.start(path, { "--workers", "1", "--control", ctl })
    run(srv, [[ d:set("kept", 1) ]])
    assert.same({ true }, run(srv, [[ return moonfork.shared.extra == nil ]]))
    helpers.edit_file(path, 'local SIZE = "1m"', 'local SIZE = "2m"')
    helpers.edit_file(path, 'small = "64k" }', 'small = "64k", extra = "128k" }')
    assert.equal(0, (helpers.ctl(ctl, 120, "reload")))
    srv:wait_log("shared dict d keeps its 1048576 bytes; the new size %(2097152%) applies at the next restart")
    srv:wait_log("reload: new shared dict extra: 131072 bytes")
    assert.same({ 1048576, 1, 131072 }, run(srv, [[ return d:capacity(), d:get("kept"), moonfork.shared.extra:capacity() ]]))
  end)

  it("refuse a bad name or size in listen() with a clear error", function()
    local dir = helpers.mktempdir()
    local cases = {
      { '{ ["1bad"] = "1m" }', "shared dict name '1bad' must be letters" },
      { '{ ok = "10q" }', "shared dict ok: bad size '10q'" },
      { '{ ok = "1k" }', "bytes from 32k to 16g" },
      { '"10m"', "option shared must be a table" },
    }
    for i, c in ipairs(cases) do
      local script = dir .. "/bad" .. i .. ".lua"
      local f = assert(io.open(script, "w"))
      f:write('require("moonfork").listen({ port = 0, shared = ' .. c[1] .. ' }, function(req, res) res:finish() end)\n')
      f:close()
      local status, _, err = helpers.run({ "--port", "0", script })
      assert.equal(1, status)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)

describe("shared dicts and SIGKILL", function()
  after_each(stop_everything)

  -- Every worker hammers the dict (large values, so it often holds the lock); a worker is SIGKILLed
  -- again and again: every other round at a random point of the hammering, every other round right
  -- after it took the lock (/hold). The others must never stall on a lock a dead worker held: each
  -- round's request answers, the dict stays sound, and status counts at least one repair per /hold.
  it("never stalls the other workers when a worker dies holding the lock", function()
    local srv, ctl = start(2, nil, { SHARED_HAMMER = "1" })
    local dir = helpers.mktempdir()
    run(srv, [[ d:set("stable", "still here") ]])
    local holds = 0
    for round = 1, 10 do
      local pids = ready_pids(ctl)
      local victim
      if round % 2 == 0 then
        local file = dir .. "/locked" .. round
        victim = cjson.decode(assert(srv:get("/hold?file=" .. file)).body).pid
        assert(helpers.wait_for(function() return helpers.read_file(file) ~= nil end))
        holds = holds + 1
      else
        victim = pids[round % #pids + 1]
        local n0 = run(srv, [[ return d:get("hammered") or 0 ]])[1]
        assert(helpers.wait_for(function() return (run(srv, [[ return d:get("hammered") or 0 ]])[1]) > n0 + 10 end))
      end
      helpers.kill(victim, "KILL")
      assert(helpers.wait_for(function()
        local p = ready_pids(ctl)
        return #p == 2 and p[1] ~= victim and p[2] ~= victim
      end))
      assert.equal("number", type(run(srv, [[ return d:incr("alive", 1, 0) ]])[1]))
    end
    local r = run(srv, [[
      d:set("stop", true)
      local ffi = require "ffi"
      pcall(ffi.cdef, "int shdict_lock(void *d); void shdict_unlock(void *d); int shdict_check(void *d);")
      ffi.C.shdict_lock(d.d) local bad = ffi.C.shdict_check(d.d) ffi.C.shdict_unlock(d.d)
      return bad, d:get("stable") ]])
    assert.same({ 0, "still here" }, r)
    assert(dict_status(ctl, "d").recoveries >= holds)
    assert(srv:count_log("died holding a shared dict's lock: released") >= holds)
  end)
end)

describe("the chat's online list", function()
  after_each(stop_everything)

  it("shows a user who spoke to one worker from every worker, and drops them after the online time", function()
    local srv = helpers.start_env(helpers.ROOT .. "/examples/chat/server.lua", { "--workers", "2" },
      { CHAT_ONLINE_SECONDS = "1" })
    local c1, c2 = helpers.conn_on(srv, 1, "/online"), helpers.conn_on(srv, 2, "/online")
    local r = assert(c1:request("POST", "/presence", { ["Content-Type"] = "application/json" }, '{"user":"alice"}'))
    assert.equal(200, r.status)
    local online = cjson.decode(assert(c2:request("GET", "/online")).body).online
    assert.equal(1, #online)
    assert.equal("alice", online[1].user)
    assert.equal("number", type(online[1].seen))
    assert(helpers.wait_for(function()
      return #cjson.decode(assert(c2:request("GET", "/online")).body).online == 0
    end))
    r = assert(c2:request("POST", "/presence", { ["Content-Type"] = "application/json" }, '{"user":""}'))
    assert.equal(400, r.status)
    c1:close()
    c2:close()
  end)
end)
