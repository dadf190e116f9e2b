-- spec/static_spec.lua: moonfork.static (lua/moonfork/static.lua) end to end, through the fixture
-- spec/fixtures/static_app.lua serving a temporary copy of spec/fixtures/static/ (so each test can
-- add symlinks, a secret next to the root, or a 20 MiB file, without touching the tree).
local helpers = require "spec.helpers"

local MiB = 1024 * 1024
local MTIME = 1577836800 -- every fixture file's mtime: 2020-01-01T00:00:00Z
local MTIME_HTTP = "Wed, 01 Jan 2020 00:00:00 GMT"
local SECRET = "TOP-SECRET-f9c1d2e3"
local q = helpers.shell_quote

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  assert(ok == true and how == "exit" and code == 0, "command failed: " .. cmd)
end

local function fixture_file(name)
  return assert(helpers.read_file(helpers.FIXTURES .. "/static/" .. name), name)
end

local function etag_of(size) return string.format('W/"%x-%x"', size, MTIME) end

describe("static", function()
  local tmp, root, srv

  before_each(function()
    tmp = helpers.mktempdir()
    root = tmp .. "/root"
    sh("cp -r " .. q(helpers.FIXTURES .. "/static") .. " " .. q(root))
    local f = assert(io.open(tmp .. "/secret.txt", "wb"))
    f:write(SECRET .. "\n")
    f:close()
    sh("ln -s ../secret.txt " .. q(root .. "/leak.txt"))       -- a file link out of the root
    sh("ln -s " .. q(tmp) .. " " .. q(root .. "/escape"))       -- a directory link out of the root
    sh("ln -s style.css " .. q(root .. "/alias.css"))           -- a link that stays inside
    sh("find " .. q(root) .. " -exec touch -h -d @" .. MTIME .. " {} +")
    srv = helpers.start_env("static_app", { "--workers", "2" }, { STATIC_DIR = root })
  end)

  after_each(function()
    helpers.stop_all()
    if tmp then sh("rm -rf " .. q(tmp)) end
  end)

  describe("GET", function()
    local cases = {
      { "/index.html", "index.html", "text/html; charset=utf-8" },
      { "/style.css", "style.css", "text/css; charset=utf-8" },
      { "/app.js", "app.js", "text/javascript; charset=utf-8" },
      { "/data.json", "data.json", "application/json" },
      { "/notes.txt", "notes.txt", "text/plain; charset=utf-8" },
      { "/LOGO.PNG", "LOGO.PNG", "image/png" },
      { "/noext", "noext", "application/octet-stream" },
      { "/empty.txt", "empty.txt", "text/plain; charset=utf-8" },
      { "/", "index.html", "text/html; charset=utf-8" },
      { "/sub/", "sub/index.html", "text/html; charset=utf-8" },
      { "/sub", "sub/index.html", "text/html; charset=utf-8" },
      { "/sub/page.html", "sub/page.html", "text/html; charset=utf-8" },
      { "/./sub//page.html", "sub/page.html", "text/html; charset=utf-8" },
      { "/alias.css", "style.css", "text/css; charset=utf-8" },
      { "/style.css?v=3", "style.css", "text/css; charset=utf-8" },
    }
    for _, case in ipairs(cases) do
      it("serves " .. case[1] .. " with its type, length, Last-Modified and ETag", function()
        local want = fixture_file(case[2])
        local r = assert(srv:get(case[1]))
        assert.equal(200, r.status, r.body)
        assert.equal(want, r.body)
        assert.equal(case[3], r.headers["content-type"])
        assert.equal(tostring(#want), r.headers["content-length"])
        assert.is_nil(r.headers["transfer-encoding"])
        assert.equal(MTIME_HTTP, r.headers["last-modified"])
        assert.equal(etag_of(#want), r.headers["etag"])
        assert.is_nil(r.headers["x-app"])
        assert.is_nil(r.headers["cache-control"])
      end)
    end

    it("serves under a prefix, with the Cache-Control given", function()
      local r = assert(srv:get("/assets/style.css"))
      assert.equal(200, r.status)
      assert.equal(fixture_file("style.css"), r.body)
      assert.equal("public, max-age=60", r.headers["cache-control"])
      r = assert(srv:get("/assets/nothing.css"))
      assert.equal(404, r.status)
      assert.equal("fallthrough", r.headers["x-app"])
    end)

    it("leaves a missing file to the app", function()
      for _, path in ipairs({ "/missing.html", "/sub/missing", "/index.html/x" }) do
        local r = assert(srv:get(path))
        assert.equal(404, r.status, path)
        assert.equal("fallthrough", r.headers["x-app"], path)
        assert.equal(path, helpers.json_decode(r.body).path)
      end
    end)

    it("answers requests one after another on a keep-alive connection", function()
      local c = srv:connect()
      for _, name in ipairs({ "index.html", "empty.txt", "style.css", "app.js" }) do
        local r = assert(c:request("GET", "/" .. name))
        assert.equal(200, r.status)
        assert.equal(fixture_file(name), r.body)
      end
    end)
  end)

  describe("conditional GET", function()
    local size = #fixture_file("style.css")
    local cases = {
      { "If-None-Match with the ETag", { ["If-None-Match"] = etag_of(size) }, 304 },
      { "If-None-Match with the strong form", { ["If-None-Match"] = string.format('"%x-%x"', size, MTIME) }, 304 },
      { "If-None-Match listing it", { ["If-None-Match"] = '"nope", ' .. etag_of(size) }, 304 },
      { "If-None-Match: *", { ["If-None-Match"] = "*" }, 304 },
      { "another ETag", { ["If-None-Match"] = 'W/"1-1"' }, 200 },
      { "If-Modified-Since the Last-Modified", { ["If-Modified-Since"] = MTIME_HTTP }, 304 },
      { "If-Modified-Since later", { ["If-Modified-Since"] = "Sat, 01 Jan 2022 10:00:00 GMT" }, 304 },
      { "If-Modified-Since a second earlier", { ["If-Modified-Since"] = "Tue, 31 Dec 2019 23:59:59 GMT" }, 200 },
      { "If-Modified-Since garbage", { ["If-Modified-Since"] = "yesterday" }, 200 },
      { "a stale ETag with a fresh date (the ETag wins)",
        { ["If-None-Match"] = 'W/"1-1"', ["If-Modified-Since"] = MTIME_HTTP }, 200 },
    }
    for _, case in ipairs(cases) do
      it("answers " .. case[3] .. " to " .. case[1], function()
        local c = srv:connect()
        local r = assert(c:request("GET", "/style.css", case[2]))
        assert.equal(case[3], r.status, r.body)
        assert.equal(etag_of(size), r.headers["etag"])
        assert.equal(MTIME_HTTP, r.headers["last-modified"])
        if case[3] == 304 then
          assert.equal("", r.body)
          assert.is_nil(r.headers["content-type"])
        else
          assert.equal(fixture_file("style.css"), r.body)
        end
        -- nothing stray after a 304: the connection still parses the next response
        r = assert(c:request("GET", "/app.js"))
        assert.equal(200, r.status)
        assert.equal(fixture_file("app.js"), r.body)
      end)
    end

    it("gives a changed file a new ETag", function()
      local r1 = assert(srv:get("/notes.txt"))
      local f = assert(io.open(root .. "/notes.txt", "ab"))
      f:write("more\n")
      f:close()
      sh("touch -d @" .. (MTIME + 60) .. " " .. q(root .. "/notes.txt"))
      local r2 = assert(srv:get("/notes.txt", { ["If-None-Match"] = r1.headers["etag"] }))
      assert.equal(200, r2.status)
      assert.are_not.equal(r1.headers["etag"], r2.headers["etag"])
      assert.equal("plain notes\nmore\n", r2.body)
      assert.equal("Wed, 01 Jan 2020 00:01:00 GMT", r2.headers["last-modified"])
    end)
  end)

  describe("HEAD", function()
    it("sends the GET's headers and no body", function()
      local c = srv:connect()
      for _, name in ipairs({ "index.html", "data.json", "empty.txt" }) do
        local r = assert(c:request("HEAD", "/" .. name))
        assert.equal(200, r.status)
        assert.equal(tostring(#fixture_file(name)), r.headers["content-length"])
        assert.equal(etag_of(#fixture_file(name)), r.headers["etag"])
        assert.equal(MTIME_HTTP, r.headers["last-modified"])
        assert.truthy(r.headers["content-type"])
      end
      -- had a body been sent, this response would not parse
      local r = assert(c:request("GET", "/style.css"))
      assert.equal(200, r.status)
      assert.equal(fixture_file("style.css"), r.body)
      assert.is_true(c:quiet(0.2))
    end)
  end)

  describe("paths", function()
    local cases = {
      "/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt",
      "/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/.%2e/secret.txt",
      "/leak.txt", "/escape/secret.txt", "/escape/root/../secret.txt", "/assets/../secret.txt",
      "/assets/%2e%2e/secret.txt", "/assets/leak.txt", "/..\\secret.txt", "/%5c..%5csecret.txt",
      "/secret.txt%00.html", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    }
    for _, path in ipairs(cases) do
      it("refuses " .. path .. " (403 or 404) and never shows a file outside the root", function()
        local r = assert(srv:request("GET", path))
        assert.is_true(r.status == 403 or r.status == 404, "status " .. r.status .. " for " .. path)
        assert.falsy(r.body:find(SECRET, 1, true), r.body)
        assert.falsy(r.body:find("root:", 1, true), r.body)
        local h = assert(srv:request("HEAD", path))
        assert.is_true(h.status == 403 or h.status == 404, "HEAD status " .. h.status)
      end)
    end

    it("answers 403 to a '..' segment, and 404 (as if absent) to a link out of the root", function()
      assert.equal(403, assert(srv:get("/%2e%2e/secret.txt")).status)
      assert.equal(403, assert(srv:get("/sub/../index.html")).status)
      local r = assert(srv:get("/leak.txt"))
      assert.equal(404, r.status)
      assert.equal("fallthrough", r.headers["x-app"])
      -- the link itself is fine once it points inside
      sh("ln -sf index.html " .. q(root .. "/leak.txt"))
      r = assert(srv:get("/leak.txt"))
      assert.equal(200, r.status)
      assert.equal(fixture_file("index.html"), r.body)
    end)
  end)

  describe("methods", function()
    for _, m in ipairs({ "POST", "PUT", "DELETE", "OPTIONS", "PATCH" }) do
      it("lets " .. m .. " of an existing file fall through to the app", function()
        local r = assert(srv:request(m, "/index.html", nil, "payload"))
        assert.equal(200, r.status, r.body)
        assert.equal("fallthrough", r.headers["x-app"])
        local v = helpers.json_decode(r.body)
        assert.equal(m, v.method)
        assert.equal("/index.html", v.path)
        assert.equal("payload", v.body)
      end)
    end
  end)

  describe("a large file", function()
    local SIZE = 20 * MiB

    -- Bytes waiting in the receive queue of the client side of conn, or nil.
    local function rx_queue(conn)
      local _, cport = conn.sock:getsockname()
      cport = tonumber(cport)
      if os.execute("command -v ss >/dev/null 2>&1") == true then -- /proc/net/tcp can be megabytes
        local p = io.popen(string.format("ss -Htn state established '( sport = :%d and dport = :%d )'",
          cport, srv.port))
        local out = p:read("*a")
        p:close()
        return tonumber(out:match("^%s*(%d+)"))
      end
      local pat = string.format("\n%%s*%%d+: %%x+:%04X %%x+:%04X 01 %%x+:(%%x+)", cport, srv.port)
      local rx = (helpers.read_file("/proc/net/tcp") or ""):match(pat)
      return rx and tonumber(rx, 16)
    end

    local function read_head(c)
      local r = { headers = {} }
      local line = assert(c:read_line(helpers.now() + 10))
      r.status = tonumber(line:match("^HTTP/1%.1 (%d+)"))
      while true do
        local h = assert(c:read_line(helpers.now() + 10))
        if h == "" then break end
        local k, v = h:match("^([^:]+):%s*(.-)%s*$")
        r.headers[k:lower()] = v
      end
      return r
    end

    it("arrives intact to a slow reader while the worker's memory stays well under its size", function()
      local path = root .. "/big.bin"
      sh("head -c " .. SIZE .. " /dev/urandom > " .. q(path))
      local rss0 = {}
      for _, pid in ipairs(srv.workers) do rss0[pid] = assert(helpers.rss_kib(pid)) end

      local c = srv:connect()
      assert(c:send(helpers.build_request("GET", "/big.bin")))
      local head = read_head(c)
      assert.equal(200, head.status)
      assert.equal(tostring(SIZE), head.headers["content-length"])
      assert.equal("application/octet-stream", head.headers["content-type"])
      local pid = helpers.wait_for(function() return helpers.worker_of(srv, c) end, 5)
      assert.truthy(rss0[pid], "the request went to an unknown worker")
      local peak = 0
      local function sample()
        local kib = helpers.rss_kib(pid)
        if kib and kib > peak then peak = kib end
      end

      -- Read nothing until the kernel's buffers are full and the server has to wait for us: the
      -- receive queue is non-empty and no longer grows.
      local prev = -1
      assert.truthy(helpers.wait_for(function()
        sample()
        local n = rx_queue(c)
        local still = n and n > 0 and n == prev
        prev = n or -1
        return still
      end, 20), "the receive queue never filled")

      -- Then read in 4 KiB pieces, comparing each with the file.
      local f = assert(io.open(path, "rb"))
      local got = 0
      local function check(piece)
        local want = f:read(#piece)
        if want ~= piece then error("the body differs from the file within bytes " .. got .. ".." .. (got + #piece)) end
        got = got + #piece
      end
      if #c.buf > 0 then
        check(c.buf)
        c.buf = ""
      end
      c.sock:settimeout(10)
      local n = 0
      while got < SIZE do
        local want = math.min(4096, SIZE - got)
        local piece, err, partial = c.sock:receive(want)
        piece = piece or partial
        assert(piece and #piece > 0, "read failed at byte " .. got .. ": " .. tostring(err))
        check(piece)
        n = n + 1
        if n % 64 == 0 then sample() end
      end
      sample()
      assert.is_nil(f:read(1))
      f:close()
      assert.equal(SIZE, got)

      local grew = (peak - rss0[pid]) * 1024
      assert.is_true(grew < SIZE / 2, string.format("worker RSS grew by %.1f MiB serving a %d MiB file",
        grew / MiB, SIZE / MiB))
      -- the connection is still in step: the next response parses
      c.buf = ""
      local r = assert(c:request("GET", "/style.css"))
      assert.equal(200, r.status)
      assert.equal(fixture_file("style.css"), r.body)
    end)

    it("copes with a client that leaves halfway, and HEAD gives its length", function()
      local path = root .. "/big.bin"
      sh("head -c " .. SIZE .. " /dev/urandom > " .. q(path))
      local h = assert(srv:request("HEAD", "/big.bin"))
      assert.equal(200, h.status)
      assert.equal(tostring(SIZE), h.headers["content-length"])
      for _ = 1, 3 do
        local c = srv:connect()
        assert(c:send(helpers.build_request("GET", "/big.bin")))
        assert(c:read_n(MiB, helpers.now() + 10))
        c:close()
      end
      for _ = 1, 4 do
        local r = assert(srv:get("/index.html"))
        assert.equal(200, r.status)
      end
      for _, pid in ipairs(srv.workers) do assert.is_true(helpers.alive(pid)) end
      assert.equal(0, srv:count_log("error"), srv:log_text())
    end)
  end)
end)
