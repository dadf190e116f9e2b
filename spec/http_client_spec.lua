-- spec/http_client_spec.lua: moonfork.http.request(), the HTTP/1.1 client, end to end: a worker runs
-- spec/fixtures/http_client_app.lua and sends requests to spec/fixtures/http_upstream.lua (a luasocket
-- server started here, stopped by pid, that frames its answers right or wrong on purpose), or to
-- openssl s_server for TLS. Pool reuse is counted by the upstream's accept count.
local helpers = require "spec.helpers"
local socket = require "socket"

local free_port, fd_count = helpers.free_port, helpers.fd_count

local function escape(s)
  return (s:gsub("[^%w%-_.]", function(c) return string.format("%%%02X", c:byte()) end))
end

describe("moonfork.http.request()", function()
  local up, srv

  before_each(function()
    up = helpers.start_upstream("http_upstream")
    srv = helpers.start("http_client_app", { "--workers", "1" })
  end)

  after_each(function()
    helpers.stop_all()
    helpers.stop_upstream(up)
  end)

  -- the app's route, with the upstream's port; `args` are more query arguments
  local function call(route, args)
    args = args or {}
    local q = "port=" .. (args.port or up.port)
    for k, v in pairs(args) do
      if k ~= "port" then q = q .. "&" .. k .. "=" .. escape(tostring(v)) end
    end
    return helpers.get_json(srv, route .. "?" .. q)
  end

  local function get(url, args)
    args = args or {}
    args.url = url
    return call("/get", args)
  end

  describe("responses", function()
    it("reads a Content-Length body, with the status, the reason and lower-case header names", function()
      assert.are.same({ status = 200, reason = "OK", headers = { ["content-length"] = "12" }, body = "012345678901" },
        get("/len?n=12"))
    end)

    it("reads a chunked body (with chunk extensions) whole, and hands its trailer fields", function()
      local got = get("/chunked?n=2500")
      assert.are.equal(200, got.status)
      assert.are.equal(2500, #got.body)
      assert.are.equal(("0123456789"):rep(250), got.body)
      assert.are.same({ ["x-sum"] = "done" }, got.trailers)
    end)

    it("reads a body that ends where the server closes the connection", function()
      assert.are.same({ status = 200, reason = "OK", headers = { ["content-type"] = "text/plain" }, body = "0123456" },
        get("/close?n=7"))
    end)

    it("keeps a repeated header as a list, in order", function()
      local got = get("/cookies")
      assert.are.same({ "a=1", "b=2" }, got.headers["set-cookie"])
      assert.are.equal("1", got.headers["x-one"])
    end)

    it("gives 204, 304 and a response to HEAD no body, and keeps their connection", function()
      assert.are.same({ status = 204, reason = "X", headers = { ["x-code"] = "204" }, body = "" },
        get("/status?code=204"))
      assert.are.same({ status = 304, reason = "X", headers = { ["x-code"] = "304" }, body = "" },
        get("/status?code=304"))
      local head = get("/len?n=12", { method = "HEAD" })
      assert.are.same({ 200, "", "12" }, { head.status, head.body, head.headers["content-length"] })
      local after = call("/many", { url = "/status?code=204", n = 2, method = "GET" })
      assert.are.same({ 204, 204 }, after.results)
      assert.are.equal(1, after.accepts) -- all of them on one connection
    end)
  end)

  describe("requests", function()
    it("sends a string body with its length, a function's pieces chunked, or as given with the caller's Content-Length", function()
      local got = call("/bodies")
      assert.are.same({ method = "POST", path = "/echo", body = "hello", headers = {
        host = { "127.0.0.1:" .. up.port }, ["content-length"] = { "5" }, ["x-two"] = { "a", "b" } } }, got.string)
      assert.are.same({ method = "PUT", path = "/echo", body = "abcde", headers = {
        host = { "127.0.0.1:" .. up.port }, ["transfer-encoding"] = { "chunked" } } }, got.chunked)
      assert.are.same({ method = "POST", path = "/echo", body = "wxyz", headers = {
        host = { "127.0.0.1:" .. up.port }, ["content-length"] = { "4" } } }, got.length)
    end)

    it("fails with the error of a body function that returns nil, err, without ending the body", function()
      assert.are.same({ res = false, err = "the client went away", after = "next" }, call("/body-abort"))
    end)

    it("reads the response while a body function's pieces still go out: a server that answers before the body ends is not kept waiting", function()
      assert.are.same({ status = 200, body = "early", ended = false }, call("/early"))
    end)

    it("with Expect: 100-continue sends the body after 100, not at all when the server answers first, and after a wait when the server ignores it", function()
      local got = call("/expect")
      assert.are.equal(200, got["/expect"].status)
      assert.are.equal("payload", helpers.json_decode(got["/expect"].body).body)
      assert.are.same({ status = 417, body = "no" }, got["/reject"])
      assert.are.equal("payload", helpers.json_decode(got["/ignore-expect"].body).body)
    end)

    it("talks to a Unix-domain socket with http+unix://", function()
      local resp = assert(srv:get("/unix?path=" .. escape(up.path)))
      local got = helpers.json_decode(resp.body)
      assert.are.equal(200, got.status)
      assert.are.same({ method = "GET", path = "/echo", body = "", headers = { host = { "localhost" } } },
        helpers.json_decode(got.body))
    end)

    it("follows redirects up to opts.redirects, fails past them, and returns the 3xx when none are allowed", function()
      assert.are.same({ 200, "landed" }, { get("/redirect?n=3", { redirects = 3 }).status,
        get("/redirect?n=3", { redirects = 3 }).body })
      assert.are.same({ err = "too many redirects" }, get("/redirect?n=3", { redirects = 2 }))
      local got = get("/redirect?n=3")
      assert.are.same({ 302, "redirect?n=2", "moved" }, { got.status, got.headers.location, got.body })
    end)

    it("after a 303 sends GET without the body, and drops credentials and Host on a redirect to another origin", function()
      local got = call("/redirect-headers")
      assert.are.same({ method = "GET", path = "/echo", body = "", headers = { host = { "127.0.0.1:" .. up.port },
        authorization = { "secret" }, ["x-keep"] = { "1" } } }, got.same)
      assert.are.same({ method = "POST", path = "/echo", body = "data", headers = { host = { "localhost:" .. up.port },
        ["x-keep"] = { "1" }, ["content-type"] = { "text/plain" }, ["content-length"] = { "4" } } }, got.other)
    end)
  end)

  describe("keep-alive", function()
    it("reuses one pooled connection for many requests: the upstream accepts once", function()
      local got = call("/many", { url = "/len?n=12", n = 5 })
      assert.are.same({ 200, 200, 200, 200, 200 }, got.results)
      assert.are.equal(1, got.accepts)
      got = call("/many", { url = "/chunked?n=10", n = 3 }) -- across handlers too
      assert.are.equal(1, got.accepts)
      assert.are.equal(1, got.pooled)
    end)

    it("closes a pooled connection idle past opts.idle", function()
      assert.are.equal(200, get("/len?n=1", { idle = 100 }).status)
      assert.is_truthy(helpers.wait_for(function() return call("/pooled").pooled == 0 end, 10))
    end)

    it("sends a GET again on a new connection when the pooled one was closed by the server meanwhile, not a POST", function()
      local got = call("/many", { url = "/then-drop", n = 3 })
      assert.are.same({ 200, 200, 200 }, got.results)
      assert.are.equal(4, got.accepts) -- each /then-drop's connection drops the next request
      got = call("/many", { url = "/then-drop", n = 2, method = "POST" }) -- not idempotent: not sent again
      assert.are.same({ 200, "closed" }, got.results)
    end)

    it("does not reuse a connection after a close-delimited body, junk after the response or keepalive = false", function()
      assert.are.equal(4, call("/many", { url = "/close?n=3", n = 3 }).accepts) -- 3 + the count's own
      assert.are.equal(7, call("/many", { url = "/extra", n = 3 }).accepts)
      assert.are.equal(10, call("/many", { url = "/len?n=3", n = 3, keepalive = "0" }).accepts)
    end)
  end)

  describe("errors", function()
    it("returns nil, 'timeout' when the server accepts and never answers", function()
      assert.are.same({ err = "timeout" }, get("/silent", { timeout = 200 }))
      assert.are.same({ err = "timeout" }, get("/silent", { readTimeout = 200 }))
    end)

    it("returns nil, 'timeout' when the server never accepts", function()
      assert.are.same({ err = "timeout" }, call("/get", { url = "/", connectTimeout = 200, port = up.full }))
    end)

    it("returns nil, 'connection refused' where nothing listens", function()
      local resp = assert(srv:get("/get?url=/&port=" .. free_port()))
      assert.are.same({ err = "connection refused" }, helpers.json_decode(resp.body))
    end)

    it("returns nil, 'closed' when the peer closes mid-body", function()
      assert.are.same({ err = "closed" }, get("/half"))
      local got = call("/stream", { url = "/half" }) -- streamed: the pieces that came, then the error
      assert.are.same({ 200, 10, "closed", 0 }, { got.status, got.size, got.err, got.pooled })
    end)

    it("refuses a malformed response and a body over maxBody, and does not reuse their connections", function()
      assert.are.same({ err = "malformed response: Invalid character in Content-Length" }, get("/malformed"))
      assert.are.same({ err = "response body larger than maxBody (50 bytes)" }, get("/len?n=100", { maxBody = 50 }))
      assert.are.same({ 200 }, { get("/len?n=50", { maxBody = 50 }).status })
      local got = call("/many", { url = "/malformed", n = 2 })
      assert.are.same({ "malformed response: Invalid character in Content-Length",
        "malformed response: Invalid character in Content-Length" }, got.results)
      assert.are.equal(5, got.accepts) -- 3 before (the first here reuses n=50's), 1 more, the count's own
    end)

    it("raises an error for misuse: bad opts (NaN, out of range, wrong types) or a URL that is not a string", function()
      assert.are.same({ nan = "opts.timeout", redirects = "opts.redirects", headers = "opts.headers", body = "opts.body",
        method = "opts.method", maxBody = "opts.maxBody", url = "url must be a string" }, call("/misuse"))
    end)

    it("raises an error for a header value with CR or LF, and sends nothing", function()
      local got = call("/bad-header")
      assert.is_false(got.ok)
      assert.is_truthy(got.err:find("header X-A has a CR, LF or NUL", 1, true), got.err)
    end)

    it("skips interim 1xx responses, and refuses a server that sends more than 16 of them", function()
      assert.are.same({ 200, "done" }, { get("/interim?n=3").status, get("/interim?n=16").body })
      assert.are.same({ err = "malformed response: more than 16 1xx responses" }, get("/interim?n=17"))
    end)

    it("returns nil, err for a URL it cannot use", function()
      local function bad(url)
        local resp = assert(srv:get("/get?port=1&url=" .. escape(url)))
        return helpers.json_decode(resp.body).err
      end
      assert.is_truthy(bad("x"):match("^bad url"), bad("x"))
    end)
  end)

  describe("streaming", function()
    it("hands a large body out in pieces, then nil, and pools the connection; maxBody applies only when given", function()
      local got = call("/stream", { url = "/len?n=3000000" })
      assert.are.same({ 200, 3000000, false, false, false, 1 },
        { got.status, got.size, got.err, got.body, got.after, got.pooled })
      assert.is_true(got.pieces > 1, tostring(got.pieces))
      got = call("/stream", { url = "/chunked?n=300000" })
      assert.are.same({ 200, 300000, 1 }, { got.status, got.size, got.pooled })
      got = call("/stream", { url = "/len?n=3000000", maxBody = 1000000 })
      assert.are.equal("response body larger than maxBody (1000000 bytes)", got.err)
      assert.are.equal(0, got.pooled)
    end)

    it("relays a body much larger than memory would hold without holding it: the Lua heap and the RSS stay small", function()
      local pid = srv.workers[1]
      call("/stream", { url = "/len?n=100000" })
      local rss0 = assert(helpers.rss_kib(pid))
      local got = call("/stream", { url = "/len?n=" .. 200 * 1024 * 1024 })
      assert.are.same({ 200, 200 * 1024 * 1024, false }, { got.status, got.size, got.err })
      assert.is_true(got.heap_mib < 32, "the Lua heap reached " .. got.heap_mib .. " MiB")
      local grew = (helpers.rss_kib(pid) - rss0) / 1024
      assert.is_true(grew < 32, "RSS grew by " .. grew .. " MiB")
    end)

    it("closes a stream abandoned with res:close() or left unread by its handler: no descriptor is kept", function()
      local worker = srv.workers[1]
      assert.are.same({ after_close = false, first = true }, call("/stream-abandon", { url = "/len?n=1000000", close = "1" }))
      call("/stream-abandon", { url = "/len?n=1000000" })
      local before = fd_count(worker)
      for i = 1, 20 do call("/stream-abandon", { url = "/len?n=1000000", close = tostring(i % 2) }) end
      assert.is_true(fd_count(worker) <= before + 2, "fds grew from " .. before .. " to " .. fd_count(worker))
      local got = call("/many", { url = "/len?n=1", n = 1 })
      assert.are.same({ 200 }, got.results)
    end)
  end)

  describe("where it may be used", function()
    it("works from a timer callback", function()
      call("/timer")
      local got = helpers.wait_for(function()
        local r = helpers.json_decode(assert(srv:get("/timer-result")).body)
        if not r.pending then return r end
      end, 10)
      assert.are.same({ status = 200, reason = "OK", headers = { ["content-length"] = "3" }, body = "012" }, got)
    end)

    it("works inside a coroutine.wrap iterator in a handler", function()
      assert.are.same({ "0", "01", "012" }, call("/wrap"))
    end)
  end)
end)

describe("moonfork.http.request() over TLS", function()
  local dir, ca, good, wrong

  local function openssl(args, what)
    assert(helpers.sh("openssl " .. args .. " >/dev/null 2>&1"), "openssl: " .. what)
  end

  -- a certificate for `name` signed by the spec's CA, and openssl s_server -www presenting it
  local function tls_server(name)
    local q = function(f) return helpers.shell_quote(dir .. "/" .. name .. f) end
    openssl("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " .. q(".key") .. " -out "
      .. q(".csr") .. " -subj '/CN=" .. name .. "'", "the request for " .. name)
    helpers.write_file(dir .. "/" .. name .. ".ext", "subjectAltName=DNS:" .. name .. "\n")
    openssl("x509 -req -in " .. q(".csr") .. " -CA " .. helpers.shell_quote(ca) .. " -CAkey "
      .. helpers.shell_quote(dir .. "/ca.key") .. " -CAcreateserial -out " .. q(".pem") .. " -days 2 -extfile "
      .. q(".ext"), "the certificate for " .. name)
    local port = free_port()
    local p = helpers.bg_start({ "openssl", "s_server", "-accept", "127.0.0.1:" .. port, "-cert",
      dir .. "/" .. name .. ".pem", "-key", dir .. "/" .. name .. ".key", "-www", "-quiet" })
    assert(helpers.wait_for(function()
      local c = socket.connect("127.0.0.1", port)
      if c then c:close() end
      return c ~= nil
    end, 10), "openssl s_server never listened")
    return { proc = p, port = port }
  end

  before_each(function()
    dir = helpers.mktempdir()
    ca = dir .. "/ca.pem"
    openssl("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "
      .. helpers.shell_quote(dir .. "/ca.key") .. " -out " .. helpers.shell_quote(ca)
      .. " -days 2 -subj '/CN=moonfork spec CA'", "the CA")
    good = tls_server("localhost")
    wrong = tls_server("wrong.example")
  end)

  after_each(function()
    helpers.stop_all()
    helpers.bg_stop(good.proc, "KILL")
    helpers.bg_stop(wrong.proc, "KILL")
    helpers.sh("rm -rf " .. helpers.shell_quote(dir))
  end)

  local function get(srv, port, extra)
    local resp = assert(srv:get("/get?scheme=https&host=localhost&url=/&port=" .. port .. (extra or "")))
    assert.are.equal(200, resp.status, resp.body)
    return helpers.json_decode(resp.body)
  end

  it("verifies the server's certificate and name, then reads the response", function()
    local srv = helpers.start_env("http_client_app", { "--workers", "1" }, { SSL_CERT_FILE = ca })
    local got = get(srv, good.port)
    assert.are.equal(200, got.status, got.err)
    assert.is_truthy(got.body:find("s_server", 1, true), got.body)
  end)

  it("fails with the reason for a wrong name or an unknown CA; with verify = false it connects", function()
    local srv = helpers.start_env("http_client_app", { "--workers", "1" }, { SSL_CERT_FILE = ca })
    assert.are.same({ err = "certificate verify failed: hostname mismatch" }, get(srv, wrong.port))
    srv:stop()
    srv = helpers.start("http_client_app", { "--workers", "1" }) -- the system's store: our CA is unknown
    assert.are.same({ err = "certificate verify failed: unable to get local issuer certificate" }, get(srv, good.port))
    assert.are.equal(200, get(srv, good.port, "&verify=0").status)
  end)
end)
