-- spec/notes_spec.lua: the notes example (examples/notes/app.lua) end to end: the real binary with
-- 2 workers against a real PostgreSQL (spec/pg_server.lua) and a real redis-server
-- (spec/redis_server.lua), both started here and stopped by pid. Waits poll; nothing sleeps.
local helpers = require "spec.helpers"
local pg_server = require "spec.pg_server"
local redis_server = require "spec.redis_server"
local cjson = require "cjson"

local APP = helpers.ROOT .. "/examples/notes/app.lua"

if not pg_server.available() then
  describe("examples/notes", function()
    pending("PostgreSQL is not installed (Debian package postgresql): skipped")
  end)
  return
end

describe("examples/notes", function()
  local pg, rs, srv

  setup(function()
    pg = pg_server.start()
    rs = redis_server.start({ appendonly = true })
  end)

  teardown(function()
    if rs then redis_server.stop(rs) end
    if pg then pg_server.stop(pg) end
  end)

  before_each(function()
    if not rs.proc then redis_server.restart(rs) end
    if not pg.proc then pg_server.restart(pg) end
    assert(pg_server.sql(pg, "DROP TABLE IF EXISTS notes"))
    assert(redis_server.cmd(rs, "FLUSHALL"))
    srv = helpers.start_env(APP, { "--workers", "2" }, {
      NOTES_PG = pg.conninfo, NOTES_REDIS = "redis://127.0.0.1:" .. rs.port, NOTES_CACHE_TTL = 30,
    })
  end)

  after_each(function()
    helpers.stop_all()
  end)

  -- request(method, path[, body]) -> status, decoded JSON body (nil when empty), response
  local function request(method, path, body)
    if type(body) == "table" then body = cjson.encode(body) end
    local headers = body and { ["Content-Type"] = "application/json" } or nil
    local resp = assert(srv:request(method, path, headers, body))
    local data = resp.body ~= "" and helpers.json_decode(resp.body) or nil
    return resp.status, data, resp
  end

  local function create(title, body)
    local status, note = request("POST", "/api/notes", { title = title, body = body })
    assert.are.equal(201, status, cjson.encode(note))
    return note
  end

  local function list(query)
    local status, page, resp = request("GET", "/api/notes" .. (query or ""))
    assert.are.equal(200, status, resp.body)
    return page, resp.headers["x-cache"]
  end

  local function titles(page)
    local out = {}
    for i, n in ipairs(page.notes) do out[i] = n.title end
    return out
  end

  local function count_rows()
    return tonumber(assert(pg_server.sql(pg, "SELECT count(*) FROM notes")))
  end

  describe("schema", function()
    -- Without the advisory lock, two workers' CREATE TABLE IF NOT EXISTS collide on pg_type in most
    -- starts (23505): three starts make a miss unlikely.
    it("is made at start when missing, by both workers at once without a failure", function()
      for round = 1, 3 do
        if round > 1 then
          helpers.stop_all()
          assert(pg_server.sql(pg, "DROP TABLE notes"))
          srv = helpers.start_env(APP, { "--workers", "2" }, { NOTES_PG = pg.conninfo, NOTES_REDIS = "off" })
        end
        assert.truthy(helpers.wait_for(function()
          return pg_server.sql(pg, "SELECT to_regclass('notes')") == "notes"
        end))
        assert.truthy(helpers.wait_for(function()
          return pg_server.sql(pg, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
        end))
        assert.are.equal(0, srv:count_log("schema not made"), srv:log_text())
        assert.are.equal(0, count_rows())
      end
    end)
  end)

  describe("routes", function()
    it("POST creates a note: 201, Location and the note with its times", function()
      local status, note, resp = request("POST", "/api/notes", { title = "Groceries", body = "milk\neggs" })
      assert.are.equal(201, status)
      assert.are.equal("/api/notes/" .. note.id, resp.headers["location"])
      assert.are.equal("Groceries", note.title)
      assert.are.equal("milk\neggs", note.body)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", note.created_at)
      assert.are.equal(note.created_at, note.updated_at)
      assert.are.equal(1, count_rows())
    end)

    it("POST without a body field stores an empty body", function()
      assert.are.equal("", create("only a title").body)
    end)

    it("GET /api/notes/ID returns the note, 404 for one that does not exist", function()
      local note = create("a", "b")
      local status, got = request("GET", "/api/notes/" .. note.id)
      assert.are.equal(200, status)
      assert.are.same(note, got)
      local st, err = request("GET", "/api/notes/" .. (note.id + 1))
      assert.are.equal(404, st)
      assert.are.equal("note " .. (note.id + 1) .. " not found", err.error)
    end)

    it("PUT replaces title and body and moves updated_at; 404 for a missing note", function()
      local note = create("old", "old body")
      local status, got = request("PUT", "/api/notes/" .. note.id, { title = "new", body = "new body" })
      assert.are.equal(200, status)
      assert.are.equal("new", got.title)
      assert.are.equal("new body", got.body)
      assert.are.equal(note.created_at, got.created_at)
      assert.are.equal("new|new body", pg_server.sql(pg, "SELECT title || '|' || body FROM notes WHERE id = " .. note.id))
      assert.are.equal(404, (request("PUT", "/api/notes/999", { title = "x" })))
    end)

    it("DELETE removes the note: 204 without a body, then 404", function()
      local note = create("gone soon")
      local status, body = request("DELETE", "/api/notes/" .. note.id)
      assert.are.equal(204, status)
      assert.is_nil(body)
      assert.are.equal(0, count_rows())
      assert.are.equal(404, (request("GET", "/api/notes/" .. note.id)))
      assert.are.equal(404, (request("DELETE", "/api/notes/" .. note.id)))
    end)

    it("keeps text that looks like SQL as data", function()
      local evil = "x'); DROP TABLE notes; --"
      local note = create(evil, evil)
      assert.are.equal(evil, select(2, request("GET", "/api/notes/" .. note.id)).title)
      assert.are.equal(1, count_rows())
    end)

    it("counts characters, not bytes: a title of 200 two-byte characters is accepted", function()
      assert.are.equal(200, #create(string.rep("é", 200)).title / 2)
    end)

    it("answers unknown paths 404 and wrong methods 405 with Allow", function()
      local status, err = request("GET", "/api/nope")
      assert.are.equal(404, status)
      assert.are.equal("not found", err.error)
      local st, _, resp = request("PATCH", "/api/notes")
      assert.are.equal(405, st)
      assert.are.equal("GET, POST", resp.headers["allow"])
      st, _, resp = request("POST", "/api/notes/1", { title = "x" })
      assert.are.equal(405, st)
      assert.are.equal("GET, PUT, DELETE", resp.headers["allow"])
    end)

    it("serves the page at /", function()
      local resp = assert(srv:get("/"))
      assert.are.equal(200, resp.status)
      assert.matches("text/html", resp.headers["content-type"])
      assert.truthy(resp.body:find('<script src="app.js">', 1, true))
      assert.are.equal(200, assert(srv:get("/app.js")).status)
      assert.are.equal(200, assert(srv:get("/style.css")).status)
    end)
  end)

  describe("400s", function()
    local long_title, long_body = string.rep("t", 201), string.rep("b", 10001)
    local bad_bodies = {
      { '{"title": "a",', "invalid JSON: " },
      { "", "invalid JSON: " },
      { '["title"]', "the body must be a JSON object" },
      { '"title"', "the body must be a JSON object" },
      { '{}', "title is required" },
      { '{"body": "b"}', "title is required" },
      { '{"title": 5}', "title must be a string" },
      { '{"title": null}', "title must be a string" },
      { '{"title": "   "}', "title must not be empty" },
      { cjson.encode({ title = long_title }), "title is longer than 200 characters" },
      { '{"title": "a", "body": 5}', "body must be a string" },
      { '{"title": "a", "body": ["x"]}', "body must be a string" },
      { cjson.encode({ title = "a", body = long_body }), "body is longer than 10000 characters" },
      { '{"title": "a\\u0000b"}', "title must not contain NUL characters" },
      { '{"title": "a\255b"}', "title is not valid UTF-8" },
      { '{"title": "\237\160\128"}', "title is not valid UTF-8" }, -- a UTF-16 surrogate
      { '{"title": "\192\175"}', "title is not valid UTF-8" },       -- an overlong '/'
      { '{"title": "\\ud800"}', "invalid JSON: " },
      { '{"title": "a", "tags": []}', "unknown field: tags" },
    }
    for _, case in ipairs(bad_bodies) do
      it("POST and PUT with " .. case[1]:sub(1, 40) .. " -> " .. case[2], function()
        local note = create("kept")
        for _, target in ipairs({ { "POST", "/api/notes" }, { "PUT", "/api/notes/" .. note.id } }) do
          local status, err = request(target[1], target[2], case[1])
          assert.are.equal(400, status, target[1])
          assert.are.equal(1, err.error:find(case[2], 1, true), err.error)
        end
        assert.are.equal(1, count_rows())
        assert.are.equal("kept", pg_server.sql(pg, "SELECT title FROM notes"))
      end)
    end

    for _, id in ipairs({ "abc", "0", "-1", "1.5", "01", "1e3", "1234567890123456", "" }) do
      it("GET, PUT and DELETE /api/notes/" .. id .. " -> bad id", function()
        for _, method in ipairs({ "GET", "PUT", "DELETE" }) do
          local status, err = request(method, "/api/notes/" .. id, method == "PUT" and { title = "x" } or nil)
          assert.are.equal(400, status, method)
          assert.are.equal("bad id: must be a positive whole number", err.error)
        end
      end)
    end

    for _, q in ipairs({ "limit=0", "limit=101", "limit=x", "limit=1.5", "limit=-3", "limit=1&limit=2" }) do
      it("GET /api/notes?" .. q .. " -> bad limit", function()
        local status, err = request("GET", "/api/notes?" .. q)
        assert.are.equal(400, status)
        assert.are.equal("bad limit: must be a whole number from 1 to 100", err.error)
      end)
    end

    for _, q in ipairs({ "cursor=x", "cursor=0", "cursor=-5", "cursor=1&cursor=2" }) do
      it("GET /api/notes?" .. q .. " -> bad cursor", function()
        local status, err = request("GET", "/api/notes?" .. q)
        assert.are.equal(400, status)
        assert.are.equal("bad cursor: must be the next_cursor of a previous page", err.error)
      end)
    end
  end)

  describe("pagination", function()
    it("pages newest first by keyset: limit=10 over 25 notes gives 10, 10, 5 and next_cursor null last", function()
      for i = 1, 25 do create("n" .. i) end
      local seen, pages, query = {}, {}, "?limit=10"
      repeat
        local page = list(query)
        pages[#pages + 1] = #page.notes
        for _, n in ipairs(page.notes) do seen[#seen + 1] = n.title end
        if page.next_cursor ~= cjson.null then
          assert.are.equal(page.notes[#page.notes].id, page.next_cursor)
          query = "?limit=10&cursor=" .. page.next_cursor
        end
      until page.next_cursor == cjson.null
      assert.are.same({ 10, 10, 5 }, pages)
      for i = 1, 25 do assert.are.equal("n" .. (26 - i), seen[i]) end
    end)

    it("a note added between two pages does not shift the next one", function()
      for i = 1, 6 do create("n" .. i) end
      local first = list("?limit=3")
      assert.are.same({ "n6", "n5", "n4" }, titles(first))
      create("n7")
      assert.are.same({ "n3", "n2", "n1" }, titles(list("?limit=3&cursor=" .. first.next_cursor)))
    end)

    it("defaults to 20 notes a page", function()
      for i = 1, 21 do create("n" .. i) end
      local page = list()
      assert.are.equal(20, #page.notes)
      assert.are.equal(page.notes[20].id, page.next_cursor)
      assert.are.same({}, list("?limit=5&cursor=1").notes)
    end)
  end)

  describe("the list cache", function()
    local function redis(...) return redis_server.cmd(rs, ...) end

    it("stores a listed page in Redis with a TTL and serves it from there", function()
      create("cached")
      local page, state = list("?limit=10")
      assert.are.equal("miss", state)
      local keys = redis("KEYS", "notes:list:*")
      assert.are.same({ "notes:list:1:10:first" }, keys)
      local ttl = redis("TTL", keys[1])
      assert.is_true(ttl > 0 and ttl <= 30, tostring(ttl))
      -- changed behind the app's back: a cached page still shows the old title, from either worker
      assert(pg_server.sql(pg, "UPDATE notes SET title = 'changed in SQL'"))
      for _ = 1, 4 do
        local again, st = list("?limit=10")
        assert.are.equal("hit", st)
        assert.are.same(page, again)
      end
    end)

    for _, write in ipairs({ "create", "update", "delete" }) do
      it("a list right after a " .. write .. " shows it (the generation is bumped before the answer)", function()
        local note = create("first")
        for _ = 1, 3 do
          list()
          assert.are.equal("hit", select(2, list())) -- the page is cached now
          local before = assert(tonumber(redis("GET", "notes:gen")))
          local want
          if write == "create" then
            create("another")
            want = (list().notes[1] or {}).title == "another"
          elseif write == "update" then
            local title = "edited " .. before
            assert.are.equal(200, (request("PUT", "/api/notes/" .. note.id, { title = title })))
            local got, state = list()
            assert.are.equal("miss", state)
            want = got.notes[#got.notes].title == title
          else
            note = create("to delete")
            list()
            assert.are.equal(204, (request("DELETE", "/api/notes/" .. note.id)))
            local got = list()
            want = got.notes[1].id ~= note.id
          end
          assert.is_true(want)
          assert.is_true(tonumber(redis("GET", "notes:gen")) > before)
        end
      end)
    end

    it("50 concurrent creates over both workers each bump the generation once, and a list shows all", function()
      list()
      local gen = tonumber(redis("GET", "notes:gen")) or 0
      local conns = {}
      for i = 1, 50 do
        local c = srv:connect()
        local body = cjson.encode({ title = "c" .. i })
        assert(c:send(helpers.build_request("POST", "/api/notes", { ["Content-Type"] = "application/json" }, body)))
        conns[i] = c
      end
      for i = 1, 50 do
        assert.are.equal(201, assert(conns[i]:receive()).status)
        conns[i]:close()
      end
      assert.are.equal(gen + 50, tonumber(redis("GET", "notes:gen")))
      local page = list("?limit=100")
      assert.are.equal(50, #page.notes)
      assert.are.equal(50, count_rows())
    end)

    it("with Redis down, every route still works, uncached", function()
      local note = create("before")
      list()
      helpers.bg_stop(rs.proc, "KILL")
      rs.proc = nil
      local n2 = create("during")
      local page, state = list()
      assert.are.equal("off", state)
      assert.are.same({ "during", "before" }, titles(page))
      assert.are.equal(200, (request("PUT", "/api/notes/" .. note.id, { title = "before, edited" })))
      assert.are.equal("before, edited", select(2, request("GET", "/api/notes/" .. note.id)).title)
      assert.are.equal(204, (request("DELETE", "/api/notes/" .. n2.id)))
      for _ = 1, 4 do assert.are.same({ "before, edited" }, titles(list())) end
      assert.truthy(srv:wait_log("Redis unavailable, lists are read from the database"))
    end)

    it("after Redis comes back with its data, no worker serves a page cached before a write made meanwhile", function()
      create("one")
      for _ = 1, 4 do list() end -- cached, and both workers have read the generation
      assert.are.equal("hit", select(2, list()))
      local gen = tonumber(redis("GET", "notes:gen"))
      helpers.bg_stop(rs.proc, "KILL") -- appendonly (fsync always): the page and the generation survive
      rs.proc = nil
      create("two")
      redis_server.restart(rs)
      assert.are.equal(gen, tonumber(redis("GET", "notes:gen")))
      assert.truthy(redis("KEYS", "notes:list:" .. gen .. ":*")[1], "the page cached before survived the restart")
      for _ = 1, 8 do assert.are.same({ "two", "one" }, titles(list())) end
      -- the writer told the other worker over the mesh: each bumps the generation once Redis is back
      assert.truthy(helpers.wait_for(function() return tonumber(redis("GET", "notes:gen")) == gen + 2 end))
      assert.truthy(helpers.wait_for(function() return select(2, list()) == "hit" end))
      for _ = 1, 4 do assert.are.same({ "two", "one" }, titles(list())) end
      assert.truthy(srv:wait_log("Redis is back, lists are cached again"))
    end)
  end)

  describe("configuration", function()
    local function restart_with(redis_spec)
      helpers.stop_all()
      srv = helpers.start_env(APP, { "--workers", "2" }, { NOTES_PG = pg.conninfo, NOTES_REDIS = redis_spec })
    end

    it("NOTES_REDIS may be a Unix socket path", function()
      restart_with(rs.path)
      create("over the socket")
      list()
      assert.are.equal("hit", select(2, list()))
      assert.truthy(redis_server.cmd(rs, "KEYS", "notes:list:*")[1])
    end)

    it("NOTES_REDIS=off lists from the database and leaves Redis alone", function()
      restart_with("off")
      create("uncached")
      for _ = 1, 3 do
        local page, state = list()
        assert.are.equal("off", state)
        assert.are.same({ "uncached" }, titles(page))
      end
      assert.are.same({}, redis_server.cmd(rs, "KEYS", "notes:*"))
    end)
  end)

  describe("PostgreSQL down", function()
    it("answers 503 with a clear error, and works again once it is back", function()
      local note = create("kept")
      helpers.bg_stop(pg.proc, "INT")
      pg.proc = nil
      for _, r in ipairs({ { "POST", "/api/notes", { title = "x" } }, { "GET", "/api/notes/" .. note.id },
          { "PUT", "/api/notes/" .. note.id, { title = "y" } }, { "DELETE", "/api/notes/" .. note.id },
          { "GET", "/api/notes?limit=7" } }) do
        local status, err = request(r[1], r[2], r[3])
        assert.are.equal(503, status, r[1] .. " " .. r[2])
        assert.matches("^the database is unavailable: ", err.error)
      end
      pg_server.restart(pg)
      local ok = helpers.wait_for(function()
        return request("POST", "/api/notes", { title = "after" }) == 201
      end)
      assert.truthy(ok)
      assert.are.same({ "after", "kept" }, titles(list("?limit=7")))
    end)
  end)
end)
