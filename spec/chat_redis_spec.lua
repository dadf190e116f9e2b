-- spec/chat_redis_spec.lua: the chat (examples/chat/server.lua) on a Redis Stream (streamlog.lua),
-- one host against a real redis-server: ids are the stream's, a post is answered once it is in the
-- stream, a retried post (same key) is stored once, history survives the whole server, posts during a
-- Redis outage get 503 and readers go on from where they were with no gap and no duplicate.
local helpers = require "spec.helpers"
local redis_server = require "spec.redis_server"
local sse = require "spec.sse_client"

local CHAT = helpers.ROOT .. "/examples/chat/server.lua"
local HOST = "127.0.0.1"
local STREAM = "moonfork:chat"

local function start_chat(r, workers)
  return helpers.start_env(CHAT, { "--workers", tostring(workers or 2) },
    { MOONFORK_REDIS = "redis://127.0.0.1:" .. r.port })
end

local function post_ok(srv, user, text, key)
  local status, body = sse.post(HOST, srv.port, { user = user, text = text, key = key })
  assert.equal(201, status, type(body) == "table" and body.error or tostring(body))
  assert.matches("^%d+%-%d+$", body.id)
  return body.id
end

-- every reader got exactly `ids`, in that order
local function all_got(readers, ids)
  for _, rd in ipairs(readers) do
    local got = sse.ids(rd)
    if #got ~= #ids then return false end
    for i = 1, #ids do if got[i] ~= ids[i] then return false end end
  end
  return true
end

describe("chat on a Redis Stream", function()
  local r, srv, readers

  before_each(function()
    r = redis_server.start({ appendonly = true })
    srv = start_chat(r)
    readers = {}
  end)

  after_each(function()
    for _, rd in ipairs(readers) do sse.close(rd) end
    if srv then srv:stop() end
    if r then redis_server.stop(r) end
  end)

  local function reader(since)
    local rd = sse.open(HOST, srv.port, { since = since or "0" })
    readers[#readers + 1] = rd
    return rd
  end

  it("answers a post with the id XADD gave it, and every reader gets the posts in stream order", function()
    for _ = 1, 4 do reader() end
    local ids = {}
    for i = 1, 10 do ids[i] = post_ok(srv, "ann", "hello " .. i) end
    assert.is_true(sse.ascending(ids))
    local entries = redis_server.cmd(r, "XRANGE", STREAM, "-", "+")
    assert.equal(10, #entries)
    for i, e in ipairs(entries) do assert.equal(ids[i], e[1]) end
    assert.is_true(sse.pump(readers, function() return all_got(readers, ids) end, 20),
      "the readers did not get exactly the posted ids in order")
    local status, body = sse.request(HOST, srv.port, "GET", "/messages?since=" .. ids[7])
    assert.equal(200, status)
    assert.same({ ids[8], ids[9], ids[10] }, { body.messages[1].id, body.messages[2].id, body.messages[3].id })
    assert.equal("hello 8", body.messages[1].text)
  end)

  it("stores a post retried with the same key once, and answers the retry with the first id", function()
    local a = post_ok(srv, "ann", "only once", "key-1")
    local b = post_ok(srv, "ann", "only once", "key-1")
    local c = post_ok(srv, "ann", "another", "key-2")
    assert.equal(a, b)
    assert.are_not.equal(a, c)
    assert.equal(2, redis_server.cmd(r, "XLEN", STREAM))
    local status, body = sse.post(HOST, srv.port, { user = "ann", text = "x", key = "bad key!" })
    assert.equal(400, status)
    assert.matches("key", body.error)
  end)

  it("delivers what another host adds to the stream", function()
    local rd = reader()
    local id = redis_server.cmd(r, "XADD", STREAM, "*", "user", "far", "text", "from elsewhere", "k", "x:1")
    assert.is_true(sse.pump(readers, function() return #rd.events == 1 end, 20))
    assert.equal(id, rd.events[1].id)
    assert.matches("from elsewhere", rd.events[1].data, 1, true)
  end)

  it("serves the history from the stream after the whole server was killed and started again", function()
    local ids = {}
    for i = 1, 5 do ids[i] = post_ok(srv, "ann", "before " .. i) end
    srv:stop("KILL")
    srv = start_chat(r)
    local status, body = sse.request(HOST, srv.port, "GET", "/messages?since=0")
    assert.equal(200, status)
    assert.equal(5, #body.messages)
    for i = 1, 5 do assert.equal(ids[i], body.messages[i].id) end
    local rd = reader(ids[3]) -- a client resuming after the third
    assert.is_true(sse.pump(readers, function() return all_got(readers, { ids[4], ids[5] }) end, 20))
  end)

  it("answers 503 with a clear body while Redis is down, and readers go on with no gap or duplicate", function()
    for _ = 1, 3 do reader() end
    local ids = { post_ok(srv, "ann", "before") }
    assert.is_true(sse.pump(readers, function() return all_got(readers, ids) end, 20))
    helpers.bg_stop(r.proc, "KILL") -- its directory (and append-only file) stays
    r.proc = nil
    local status, body = sse.post(HOST, srv.port, { user = "ann", text = "during", key = "d1" })
    assert.equal(503, status)
    assert.matches("Redis", body.error)
    assert.matches("not acknowledged", body.error)
    redis_server.restart(r)
    assert.is_true(helpers.wait_for(function()
      local s, b = sse.post(HOST, srv.port, { user = "ann", text = "after", key = "a1" })
      if s == 201 then ids[#ids + 1] = b.id end
      return s == 201
    end, 30), "posts never succeeded again after Redis restarted")
    for i = 1, 3 do ids[#ids + 1] = post_ok(srv, "ann", "after " .. i) end
    assert.is_true(sse.pump(readers, function() return all_got(readers, ids) end, 30),
      "the readers did not get every acknowledged post exactly once, in order")
  end)

  it("refuses a since that is not a stream id", function()
    local status, body = sse.request(HOST, srv.port, "GET", "/messages?since=abc")
    assert.equal(400, status)
    assert.matches("message id", body.error)
  end)
end)
