-- spec/pg_spec.lua: moonfork.pg end to end: a worker runs spec/fixtures/pg_app.lua against a real
-- PostgreSQL cluster (spec/pg_server.lua: initdb in a temporary directory, a free port, stopped by
-- pid). Waits poll pg_stat_activity or the app; nothing sleeps a fixed time.
local helpers = require "spec.helpers"
local pg_server = require "spec.pg_server"

if not pg_server.available() then
  describe("moonfork.pg", function()
    pending("PostgreSQL is not installed (Debian package postgresql): skipped")
  end)
  return
end

describe("moonfork.pg", function()
  local pg, srv

  setup(function()
    pg = pg_server.start()
  end)

  teardown(function()
    if pg then pg_server.stop(pg) end
  end)

  before_each(function()
    assert(pg_server.sql(pg, "DROP TABLE IF EXISTS notes; CREATE TABLE notes (id int PRIMARY KEY, title text, owner text)"))
    srv = helpers.start("pg_app", { "--workers", "1" })
  end)

  after_each(function()
    helpers.stop_all()
  end)

  local function path_of(route, params)
    params = params or {}
    params.ci = params.ci or pg.conninfo
    return route .. helpers.query_string(params)
  end

  local function call(route, params)
    return helpers.get_json(srv, path_of(route, params))
  end

  local function query(sql, params)
    params = params or {}
    params.sql = sql
    return call("/query", params)
  end

  -- sends a request without reading its answer (it is expected to wait in the worker)
  local function send_only(route, params)
    local c = assert(helpers.connect(srv.port))
    assert(c:send("GET " .. path_of(route, params) .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    return c
  end

  -- the backend pid running a statement that matches the LIKE pattern, polled for
  local function backend_running(like, not_pid)
    return helpers.wait_for(function()
      local out = pg_server.sql(pg, "SELECT pid FROM pg_stat_activity WHERE query LIKE '" .. like
        .. "' AND pid <> pg_backend_pid() AND pid <> " .. (not_pid or 0))
      return out and tonumber(out:match("%d+"))
    end)
  end

  describe("libpq", function()
    it("is loaded into a worker at its first connection, not at start", function()
      local function mapped()
        return (helpers.read_file("/proc/" .. srv.workers[1] .. "/maps") or ""):find("libpq", 1, true) ~= nil
      end
      assert.is_false(mapped())
      query("SELECT 1 AS one")
      assert.is_true(mapped())
    end)
  end)

  describe("query", function()
    it("returns rows keyed by column, #rows, affected and command", function()
      local ins = query("INSERT INTO notes (id, title, owner) VALUES (1, 'a', 'ann'), (2, 'b', 'ann'), (3, 'c', 'bob')")
      assert.are.same({ rows = {}, n = 0, affected = 3, command = "INSERT" }, ins)
      local got = query("SELECT id, title FROM notes WHERE owner = $1 ORDER BY id LIMIT $2", { p1 = "s:ann", p2 = "n:20" })
      assert.are.same({ { id = "number:1", title = "string:a" }, { id = "number:2", title = "string:b" } }, got.rows)
      assert.are.equal(2, got.n)
      assert.are.equal(2, got.affected)
      assert.are.equal("SELECT", got.command)
    end)

    it("returns nil, 'SQLSTATE: message' and the SQLSTATE for a failed statement", function()
      query("INSERT INTO notes (id, title) VALUES (1, 'a')")
      local got = query("INSERT INTO notes (id, title) VALUES (1, 'again')")
      assert.are.equal("23505", got.code)
      assert.matches("^23505: duplicate key value violates unique constraint \"notes_pkey\"$", got.err)
      got = query("SELECT * FROM no_such_table")
      assert.are.equal("42P01", got.code)
      assert.matches("^42P01: relation \"no_such_table\" does not exist$", got.err)
    end)

    it("keeps parameters that carry SQL injection as data", function()
      local evil = { "'; DROP TABLE notes; --", "1 OR 1=1", "$2", "\\'; DELETE FROM notes; --", "\"notes\"" }
      for i, s in ipairs(evil) do
        local got = query("INSERT INTO notes (id, title) VALUES ($1, $2)", { p1 = "n:" .. i, p2 = "s:" .. s })
        assert.are.equal(1, got.affected, got.err)
      end
      for i, s in ipairs(evil) do
        local got = query("SELECT title FROM notes WHERE title = $1", { p1 = "s:" .. s })
        assert.are.same({ { title = "string:" .. s } }, got.rows, "row " .. i)
      end
      local none = query("SELECT id FROM notes WHERE title = $1", { p1 = "s:x' OR '1'='1" })
      assert.are.same({ n = 0, err = nil }, { n = none.n, err = none.err })
      assert.are.equal(tostring(#evil), pg_server.sql(pg, "SELECT count(*) FROM notes"))
    end)

    it("sends strings, numbers, booleans, NULL and bytes as parameters", function()
      local got = query("SELECT $1::text AS s, $2::int8 AS i, $3::float8 AS f, $4::bool AS b, $5::int4 AS n, "
        .. "$6::bytea AS by, $7::text AS u", { p1 = "s:héllo", p2 = "n:9007199254740991", p3 = "n:0.25",
          p4 = "b:true", p5 = "null", p6 = "x:00ff0041", p7 = "s:" })
      assert.are.same({ { s = "bytes:68c3a96c6c6f", i = "number:9007199254740991", f = "number:0.25",
        b = "boolean:true", n = "null", by = "bytes:00ff0041", u = "string:" } }, got.rows)
    end)

    it("answers COPY with an error and closes that connection, instead of waiting for data", function()
      local got = query("COPY notes FROM STDIN", { size = 1 })
      assert.are.equal("08006", got.code)
      assert.matches("COPY is not supported", got.err)
      assert.are.equal(1, query("SELECT 1", { size = 1 }).n)
    end)

    it("gives up on a query after query_timeout, closing its connection", function()
      local got = query("SELECT pg_sleep(60)", { size = 1, qt = 300 })
      assert.are.equal("timeout: the query took longer than 300 ms", got.err)
      local pid = backend_running("SELECT pg_sleep(60)") -- the server still runs it: stop it
      if pid then pg_server.sql(pg, "SELECT pg_terminate_backend(" .. pid .. ")") end
      assert.are.equal(1, query("SELECT 1", { size = 1, qt = 300 }).n)
    end)

    it("raises for a table parameter, naming its position", function()
      local got = query("SELECT $1::text", { p1 = "table" })
      assert.matches("parameter %$1 is a table", got.raised)
      assert.are.same({ { one = "number:1" } }, query("SELECT 1 AS one").rows) -- the worker goes on
    end)
  end)

  describe("types", function()
    it("converts every supported type, arrays and NULL", function()
      local got = query([==[SELECT 1::int2 AS i2, 2147483647::int4 AS i4, 9007199254740993::int8 AS big,
        -9007199254740992::int8 AS edge, 42::oid AS o, 1.5::float4 AS f4, 'NaN'::float8 AS nan,
        'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf, 12345678901234567890.5::numeric AS num,
        true AS t, false AS f, '{"a":[1,2,null],"b":"x"}'::json AS j, '{"k": true}'::jsonb AS jb,
        '\x00ff41'::bytea AS by, ARRAY[1,NULL,3]::int4[] AS ai,
        ARRAY['a b', 'q"u', 'back\slash', NULL, 'NULL', 'c,d', '{}']::text[] AS at,
        ARRAY[true,false] AS ab, ARRAY[1.5, 'NaN']::float8[] AS af, ARRAY['{"x":1}'::jsonb] AS aj,
        ARRAY['\x6869'::bytea] AS aby, ARRAY[9007199254740993, 1]::int8[] AS a8, ARRAY[1.10]::numeric[] AS an,
        '{}'::int4[] AS empty, ARRAY[[1,2],[3,4]] AS two, NULL::int4 AS n, 'text' AS txt, '2024-02-29'::date AS d]==])
      assert.is_nil(got.err, got.err)
      assert.are.same({
        i2 = "number:1", i4 = "number:2147483647", big = "string:9007199254740993",
        edge = "number:-9007199254740992", o = "number:42", f4 = "number:1.5", nan = "number:nan",
        inf = "number:inf", ninf = "number:-inf", num = "string:12345678901234567890.5",
        t = "boolean:true", f = "boolean:false",
        j = { a = { "number:1", "number:2", "null" }, b = "string:x" }, jb = { k = "boolean:true" },
        by = "bytes:00ff41", ai = { "number:1", "null", "number:3" },
        at = { "string:a b", "string:q\"u", "string:back\\slash", "null", "string:NULL", "string:c,d", "string:{}" },
        ab = { "boolean:true", "boolean:false" }, af = { "number:1.5", "number:nan" }, aj = { { x = "number:1" } },
        aby = { "string:hi" }, a8 = { "string:9007199254740993", "number:1" }, an = { "string:1.10" },
        empty = {}, two = { { "number:1", "number:2" }, { "number:3", "number:4" } }, n = "null",
        txt = "string:text", d = "string:2024-02-29",
      }, got.rows[1])
    end)
  end)

  describe("transaction", function()
    local function ids() return pg_server.sql(pg, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM notes") end

    it("commits when fn returns, with fn's results", function()
      assert.are.same({ ok = true, err = "fn result", code = false }, call("/tx", { mode = "commit", id = 10 }))
      assert.are.equal("10,11", ids())
    end)

    it("rolls back when fn raises an error, and returns it", function()
      local got = call("/tx", { mode = "raise", id = 20 })
      assert.is_false(got.ok)
      assert.matches("boom in the transaction", got.err)
      assert.are.equal("", ids())
    end)

    it("rolls back when a statement fails, even if fn ignores the error", function()
      local got = call("/tx", { mode = "failed", id = 30 })
      assert.is_false(got.ok)
      assert.matches("23505: duplicate key", got.err)
      got = call("/tx", { mode = "ignored", id = 40 })
      assert.are.same({ ok = false, code = "23505" }, { ok = got.ok, code = got.code })
      assert.matches("^23505: duplicate key", got.err)
      assert.are.equal("", ids())
      assert.are.equal(1, query("SELECT 1 AS one", { size = 1 }).n) -- the connection is fine afterwards
    end)

    it("rolls back a transaction a query left open before the connection is reused", function()
      local pid = query("SELECT pg_backend_pid() AS pid", { size = 1 }).rows[1].pid
      assert.are.equal("BEGIN", query("BEGIN", { size = 1 }).command)
      query("INSERT INTO notes (id) VALUES (50)", { size = 1 })
      -- inside the old transaction, the INSERT would have given it a transaction id
      local got = query("SELECT pg_current_xact_id_if_assigned() IS NULL AS fresh, pg_backend_pid() AS pid", { size = 1 })
      assert.are.same({ { fresh = "boolean:true", pid = pid } }, got.rows) -- the same connection, reused
      assert.are.equal("50", ids())
    end)
  end)

  describe("pool", function()
    it("answers a caller with a timeout error when every connection stays busy", function()
      local a = send_only("/query", { sql = "SELECT pg_sleep(60)", size = 1, timeout = 200 })
      local pid = backend_running("SELECT pg_sleep(60)")
      assert.is_truthy(pid, "the first query never started")
      local got = query("SELECT 1", { size = 1, timeout = 200 })
      assert.are.equal("timeout: no free connection in the pool within 200 ms", got.err)
      assert.are.equal(pid, backend_running("SELECT pg_sleep(60)")) -- answered while the first still ran
      assert(pg_server.sql(pg, "SELECT pg_cancel_backend(" .. pid .. ")"))
      local resp = assert(a:receive())
      assert.matches("57014: canceling statement due to user request", resp.body)
      a:close()
      assert.are.equal(1, query("SELECT 1", { size = 1, timeout = 200 }).n)
    end)

    it("gives the caller an error when its backend is terminated mid-query, and replaces the connection", function()
      local a = send_only("/query", { sql = "SELECT pg_sleep(60)", size = 1 })
      local pid = backend_running("SELECT pg_sleep(60)")
      assert.is_truthy(pid, "the query never started")
      assert(pg_server.sql(pg, "SELECT pg_terminate_backend(" .. pid .. ")"))
      local resp = assert(a:receive())
      local got = helpers.json_decode(resp.body)
      assert.are.equal("57P01", got.code)
      assert.matches("^57P01: terminating connection due to administrator command", got.err)
      a:close()
      local again = query("SELECT pg_backend_pid() AS pid", { size = 1 })
      assert.is_nil(again.err, again.err)
      assert.are_not.equal("number:" .. pid, again.rows[1].pid)
    end)

    it("replaces connections after a server restart", function()
      local before = query("SELECT pg_backend_pid() AS pid", { size = 2 })
      assert.is_nil(before.err)
      pg_server.restart(pg)
      -- the pool saw its idle connections close; if it had not yet, the caller gets an error, not a hang
      local got = query("SELECT 1 AS one", { size = 2 })
      if got.err then
        assert.are.equal("08006", got.code)
        got = query("SELECT 1 AS one", { size = 2 })
      end
      assert.are.same({ { one = "number:1" } }, got.rows)
    end)

    it("answers a connection failure with 08001 and the reason", function()
      local port = helpers.free_port()
      local got = query("SELECT 1", { ci = "host=127.0.0.1 port=" .. port .. " user=postgres connect_timeout=5" })
      assert.are.equal("08001", got.code)
      assert.matches("^08001: .*refused", got.err)
    end)

    it("opens no connection before the first query (none in the master)", function()
      local function ours()
        return tonumber(pg_server.sql(pg, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
          .. "AND pid <> pg_backend_pid()"))
      end
      assert.is_truthy(helpers.wait_for(function() return ours() == 0 end)) -- earlier tests' are gone
      query("SELECT 1", { size = 3 })
      assert.are.equal(1, ours())
    end)
  end)

  describe("worker drain", function()
    it("closes idle connections while a request still runs", function()
      helpers.stop_all()
      srv = helpers.start("pg_app", { "--workers", "1", "--grace", "30" })
      local idle = query("SELECT pg_backend_pid() AS pid", { size = 1, timeout = 1000 }).rows[1].pid
      idle = tonumber(idle:match("%d+"))
      local a = send_only("/query", { sql = "SELECT pg_sleep(60)", size = 1, timeout = 2000 })
      local busy = backend_running("SELECT pg_sleep(60)")
      assert.is_truthy(busy)
      srv:signal("TERM")
      assert.is_truthy(helpers.wait_for(function()
        return pg_server.sql(pg, "SELECT count(*) FROM pg_stat_activity WHERE pid = " .. idle) == "0"
      end), "the idle connection stayed open")
      assert.is_true(helpers.alive(srv.workers[1])) -- still draining: the request runs on
      assert(pg_server.sql(pg, "SELECT pg_cancel_backend(" .. busy .. ")"))
      local resp = assert(a:receive({ timeout = 30 }))
      assert.matches("57014", resp.body)
      a:close()
      assert.are.equal(0, srv:exit_status(60), srv:log_text())
    end)
  end)

  describe("worker exit", function()
    it("closes every connection and exits 0 (no leak or error under the sanitizers)", function()
      assert.are.same({ ok = true }, call("/listen", { ch = "events" }))
      assert.are.equal(1, query("SELECT 1", { size = 2 }).n)
      query([==[SELECT ARRAY['{"a":1}'::jsonb] AS j, '\x00'::bytea AS b, 'x' AS "bad", ARRAY[[1]] AS two]==], { size = 2 })
      assert.is_false(call("/tx", { mode = "raise", id = 1, size = 2 }).ok)
      assert.are.equal("08006", query("COPY notes FROM STDIN", { size = 2 }).code)
      assert.is_truthy(backend_running('LISTEN "events"'))
      local worker = srv.workers[1]
      srv:signal("TERM")
      assert.are.equal(0, srv:exit_status(60), srv:log_text())
      srv:wait_log("worker 1 %(pid " .. worker .. "%) exited with status 0")
      local log = srv:log_text()
      assert.is_nil(log:find("Sanitizer", 1, true), log)
      assert.is_nil(log:find("runtime error", 1, true), log)
      assert.is_truthy(helpers.wait_for(function()
        return pg_server.sql(pg, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
          .. "AND pid <> pg_backend_pid()") == "0"
      end))
    end)
  end)

  describe("listen", function()
    local function notified_with(payload)
      return helpers.wait_for(function()
        assert(pg_server.sql(pg, "NOTIFY events, '" .. payload .. "'"))
        for _, s in ipairs(call("/notified").got) do
          if s == "events:" .. payload then return true end
        end
      end)
    end

    it("works from the script's main chunk, where a query raises instead", function()
      helpers.stop_all()
      srv = helpers.start_env("pg_app", { "--workers", "1" }, { PG_CONNINFO = pg.conninfo })
      assert.is_true(helpers.wait_for(function()
        assert(pg_server.sql(pg, "NOTIFY boot, 'up'"))
        for _, s in ipairs(call("/notified").got) do
          if s == "boot:up" then return true end
        end
      end))
      local got = call("/main-chunk-query")
      assert.is_false(got.ok)
      assert.matches("queries can only run in a request handler", got.err)
    end)

    it("calls fn(payload, channel) for each NOTIFY, and LISTENs again after its connection dies", function()
      assert.are.same({ ok = true }, call("/listen", { ch = "events" }))
      assert.is_true(notified_with("one"))
      local pid = backend_running('LISTEN "events"')
      assert.is_truthy(pid)
      assert(pg_server.sql(pg, "SELECT pg_terminate_backend(" .. pid .. ")"))
      assert.is_true(notified_with("two"))
      assert.is_truthy(backend_running('LISTEN "events"', pid))
    end)
  end)
end)
