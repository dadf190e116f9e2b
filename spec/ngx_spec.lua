-- spec/ngx_spec.lua: require "moonfork.ngx", end to end. spec/fixtures/ngx_app.lua runs OpenResty-style
-- code against the global `ngx`, and spec/fixtures/resty_style_redis.lua (a driver written for
-- OpenResty, untouched) against a real redis-server started here (spec/redis_server.lua).
local helpers = require "spec.helpers"
local redis_server = require "spec.redis_server"
local cjson = require "cjson"
local mime = require "mime"

local function tohex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

-- the codec is pure Lua: checked here in-process too, over every length from 0 to 300
describe("moonfork.ngx_codec", function()
  local codec = require "moonfork.ngx_codec"

  it("encodes as luasocket's mime.b64 and decodes back, with and without padding, at every length", function()
    for n = 0, 300 do
      local t = {}
      for i = 1, n do t[i] = string.char(math.random(0, 255)) end
      local s = table.concat(t)
      local padded, bare = codec.encode(s), codec.encode(s, true)
      assert.are.equal(mime.b64(s) or "", padded) -- mime.b64("") is nil
      assert.are.equal((padded:gsub("=", "")), bare)
      assert.is_true(codec.decode(padded) == s and codec.decode(bare) == s, "length " .. n)
    end
  end)
end)

describe("moonfork.ngx", function()
  local rs, srv

  setup(function()
    rs = redis_server.start()
    srv = helpers.start("ngx_app", { "--workers", "1" })
  end)

  teardown(function()
    helpers.stop_all()
    if rs then redis_server.stop(rs) end
  end)

  local function call(path, query)
    local sep = path:find("?", 1, true) and "&" or "?"
    local resp = assert(srv:get(path .. sep .. "port=" .. rs.port .. (query or "")))
    assert.are.equal(200, resp.status, resp.body)
    return helpers.json_decode(resp.body)
  end

  describe("ngx.encode_base64 / ngx.decode_base64", function()
    local function run(input)
      local resp = assert(srv:request("POST", "/base64", { ["Content-Type"] = "application/json" },
        cjson.encode(input)))
      assert.are.equal(200, resp.status, resp.body)
      return helpers.json_decode(resp.body)
    end

    it("encode the RFC 4648 vectors and binary data, with and without padding", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      local bin = table.concat(all)
      local inputs = { "", "f", "fo", "foo", "foob", "fooba", "foobar", "\0\255\254", bin }
      local hex = {}
      for i, s in ipairs(inputs) do hex[i] = tohex(s) end
      local got = run({ enc = hex, enc_nopad = { tohex("f"), tohex("fo"), tohex("foo"), "" }, dec = {}, mime = {} })
      assert.are.same({ "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy", "AP/+", (mime.b64(bin)) },
        got.enc)
      assert.are.same({ "Zg", "Zm8", "Zm9v", "" }, got.enc_nopad)
      assert.are.equal("", got.nil_enc)
      assert.are.equal("MTIz", got.num_enc)
      assert.is_false(got.bad_pad_flag)
    end)

    it("decode with or without padding, stop at the first '=' as nginx does, and return nil for what is not base64", function()
      local got = run({ enc = {}, enc_nopad = {}, mime = {}, dec = {
        "Zm9vYmFy", "Zg==", "Zg", "Zm8=", "Zm8", "", "AP/+", "Zm9v=ignored",
        "Z", "Zm9vY", "Zm 9v", "Zm9v\n", "Zm9v!", "Zm-_", "\195\164", "====x!" } })
      assert.are.same({ tohex("foobar"), tohex("f"), tohex("f"), tohex("fo"), tohex("fo"), "", tohex("\0\255\254"),
        tohex("foo"), false, false, false, false, false, false, false, "" }, got.dec)
      assert.is_false(got.dec_nil) -- decode_base64(nil) raises
    end)

    it("decode_base64mime skips line breaks and other bytes outside the alphabet", function()
      local got = run({ enc = {}, enc_nopad = {}, dec = {}, mime = { "Zm9v\r\nYmFy", "Zm9v YmE=", "Z" } })
      assert.are.same({ tohex("foobar"), tohex("fooba"), false }, got.mime)
    end)

    it("round-trip 100 KB of random bytes, as luasocket's mime.b64 encodes them", function()
      local parts = {}
      for i = 1, 100000 do parts[i] = string.char(math.random(0, 255)) end
      local data = table.concat(parts)
      local b64 = mime.b64(data)
      local got = run({ enc = { tohex(data) }, enc_nopad = {}, dec = { b64 }, mime = {} })
      assert.is_true(got.enc[1] == b64, "encoding differs")
      assert.is_true(got.dec[1] == tohex(data), "decoding differs")
    end)
  end)

  describe("time, worker, phase, constants", function()
    it("give OpenResty's values", function()
      local f = call("/facts")
      local pid = srv.workers[1]
      assert.are.same({ 0, 1, pid, pid }, { f.id, f.count, f.pid, f.mpid })
      assert.is_false(f.exiting)
      assert.are.same({ 10026, "http" }, { f.lua_version, f.subsystem })
      assert.are.same({ "content", "init_worker" }, { f.phase, f.init_phase })
      assert.is_true(f.null)
      assert.is_true(f.now_ms_precision)
      assert.is_true(f.now_vs_time == 0 or f.now_vs_time == 1)
      assert.is_true(f.now_vs_os)
      assert.is_true(f.time_int)
      assert.are.same({ 0, -1, -2, -4, 200, 404, 500, 4, 5, 7, 8 }, f.consts)
      assert.are.same({ "table", "table", "nil", "function", "function" }, { f.var, f.shared, f.re, f.table_new, f.table_clear })
      assert.are.same({ true, "v", true }, f.shared_dict) -- ngx.shared.NAME is moonfork.shared.NAME
      assert.are.equal("Thu, 18 Nov 2010 11:27:35 GMT", f.http_time)
      assert.are.equal("a%20b%2Fc%3Fd%3D%C3%A9~", f.escape)
      assert.are.equal("a b c/d%zz", f.unescape)
    end)

    it("md5, sha1_bin and hmac_sha1 give the digests of OpenSSL", function()
      local f = call("/facts")
      assert.are.equal("5d41402abc4b2a76b9719d911017c592", f.md5)
      assert.are.equal("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", f.sha1)
      assert.are.equal("b34ceac4516ff23a143e61d79d0fa7a4fbe5f266", f.hmac)
    end)
  end)

  describe("ngx.sleep", function()
    it("suspends the handler in seconds and lets the loop run; a negative or non-number duration raises", function()
      assert.are.same({ before = false, after = true, bad = false, bad2 = false }, call("/sleep"))
    end)
  end)

  describe("ngx.log", function()
    it("joins its arguments into one line of the worker's log, with the level and the caller's file and line; debug only after ngx.log_level = ngx.DEBUG", function()
      assert.are.same({ bad_level = false, bad_arg = false }, call("/log"))
      srv:wait_log("%[error%] [^ ]*ngx_app%.lua:%d+: ngx%-log%-marker 42 nil true null")
      srv:wait_log("%[debug%] [^ ]*ngx_app%.lua:%d+: ngx%-debug%-shown")
      assert.are.equal(0, srv:count_log("ngx%-debug%-hidden"))
    end)
  end)

  describe("ngx.ctx", function()
    it("is a fresh table for each request and each timer, and can be replaced", function()
      assert.are.same({ fresh = true, timer_fresh = true, replaced = true, mark = false }, call("/ctx"))
      assert.is_true(call("/ctx").fresh)
    end)
  end)

  describe("ngx.timer.at", function()
    it("runs the callback with premature = false and the extra arguments, in phase 'timer'", function()
      assert.are.same({ ok = true, pending = 1, bad_delay = false, bad_fn = false }, call("/timer"))
      local got = helpers.wait_for(function()
        local r = call("/timer-result").result
        return r and r
      end)
      assert.are.same({ premature = false, args = { "x", false, 3 }, phase = "timer", running = 1 }, got)
    end)

    it("logs a callback's error with its traceback, and the worker goes on", function()
      assert.are.same({ true }, call("/timer-error"))
      srv:wait_log("error in timer callback: .*ngx%-timer%-boom")
      assert.are.same({ running = 0 }, call("/timer-counts"))
    end)

    it("ngx.timer.every runs its callback again and again with premature = false; a zero delay raises", function()
      assert.are.same({ runs = { { false, "arg" }, { false, "arg" }, { false, "arg" } }, zero = false }, call("/every"))
    end)

    it("lets the callback talk to redis through the driver", function()
      local key = "ngx:timer:" .. math.random(1, 1e9)
      assert.are.same({ true, false }, call("/timer-redis", "&key=" .. key))
      local v = helpers.wait_for(function() return redis_server.cmd(rs, "GET", key) end)
      assert.is_truthy(v and v:match("^timer:false:%d+$"), tostring(v))
    end)
  end)

  describe("an OpenResty-style redis driver", function()
    it("sets, gets (ngx.null for a missing key), reads binary and large bulks with receive(n + 2), gets error replies, and pipelines a table of tables in one send", function()
      assert.are.same({
        set = { "OK" }, get = { "v1" }, missing = { "null" }, binary = true, big = true,
        err = { false, "WRONGTYPE Operation against a key holding the wrong kind of value" },
        pipeline = { 0, 1, 11, "error", "null", {} }, keepalive = { 1 },
      }, call("/redis"))
    end)

    it("reuses one pooled connection: getreusedtimes grows and redis sees one client", function()
      local a, b, c = call("/reuse"), call("/reuse"), call("/reuse")
      assert.are.same({ 0, 1, 2 }, { a.reused, b.reused, c.reused })
      assert.are.same({ a.id, a.id }, { b.id, c.id })
      local list = assert(redis_server.cmd(rs, "CLIENT", "LIST"))
      local n = 0
      for line in list:gmatch("[^\n]+") do
        if line:find(" name=ngxspec ", 1, true) then n = n + 1 end
      end
      assert.are.equal(1, n, list)
    end)

    it("retries a refused connect, sleeping with ngx.sleep between attempts", function()
      assert.are.same({ false, "connection refused", 3 }, call("/retry", "&closed=" .. helpers.free_port()))
    end)

    it("subscribes on one connection and reads the message another publishes from a timer", function()
      assert.are.same({ first = { "subscribe", "ngx:ch", 1 }, msg = { "message", "ngx:ch", "hello" } }, call("/pubsub"))
    end)
  end)
end)

describe("moonfork.ngx when the worker drains", function()
  local rs, srv

  setup(function()
    rs = redis_server.start()
    srv = helpers.start("ngx_app", { "--workers", "1" })
  end)

  teardown(function()
    helpers.stop_all()
    if rs then redis_server.stop(rs) end
  end)

  it("runs pending ngx.timer callbacks at once with premature = true (they may still do I/O), and refuses new timers", function()
    local resp = assert(srv:get("/timer-premature?port=" .. rs.port))
    assert.are.same({ true, true }, helpers.json_decode(resp.body))
    assert.is_false(redis_server.cmd(rs, "GET", "ngx:premature"))
    -- a request in flight keeps the draining worker alive until the callback has finished
    local c = srv:connect()
    assert(c:send(helpers.build_request("GET", "/hold")))
    srv:wait_log("hold started")
    srv:signal("TERM")
    resp = assert(c:receive())
    assert.are.same({ done = true }, helpers.json_decode(resp.body))
    assert.are.equal("true:true:false:process exiting", redis_server.cmd(rs, "GET", "ngx:premature"))
    assert.are.equal("true", redis_server.cmd(rs, "GET", "ngx:premature-every"))
  end)
end)

describe("ngx.md5", function()
  teardown(function() helpers.stop_all() end)

  it("maps libcrypto into the worker only at the first digest", function()
    local srv = helpers.start("ngx_app", { "--workers", "1" })
    local function mapped()
      return (helpers.read_file("/proc/" .. srv.workers[1] .. "/maps") or ""):find("libcrypto", 1, true) ~= nil
    end
    assert.is_false(mapped())
    local resp = assert(srv:get("/md5?s=hello"))
    assert.are.same({ "5d41402abc4b2a76b9719d911017c592" }, helpers.json_decode(resp.body))
    assert.is_true(mapped())
  end)
end)
