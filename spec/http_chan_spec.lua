-- spec/http_chan_spec.lua: channels of open HTTP responses (res:subscribe, res:unsubscribe,
-- moonfork.http.publish; server/http_chan.c) end to end against spec/fixtures/http_chan_app.lua over
-- raw sockets: members get every publish once and in order (chunked and close-delimited bodies); a
-- response leaves when it ends or its client goes (also many at once); a reader that does not read is
-- cut off while the others keep receiving; unsubscribe; misuse is a clear error.
local helpers = require "spec.helpers"
local cjson = require "cjson"

-- Opens a stream (GET /stream?query) and reads its head and the "ready\n" piece.
local function open_stream(srv, query, http10)
  local c = srv:connect()
  assert(c:send("GET /stream?" .. query .. " HTTP/1." .. (http10 and "0" or "1") .. "\r\nHost: t\r\n\r\n"))
  local status = assert(c:read_line(helpers.now() + 5))
  assert.truthy(status:find(" 200 ", 1, true), status)
  local chunked = false
  while true do
    local h = assert(c:read_line(helpers.now() + 5))
    if h == "" then break end
    if h:lower():find("transfer-encoding: chunked", 1, true) then chunked = true end
  end
  c.chunked = chunked
  return c
end

-- The next piece of body: a chunk's data, or (close-delimited) the next line with its "\n".
local function next_piece(c, timeout)
  local deadline = helpers.now() + (timeout or 5)
  if not c.chunked then
    local line, err = c:read_line(deadline)
    return line and line .. "\n", err
  end
  local size, err = c:read_line(deadline)
  if not size then return nil, err end
  local n = tonumber(size:match("^(%x+)"), 16)
  if n == 0 then return nil, "ended" end
  local data, derr = c:read_n(n + 2, deadline)
  if not data then return nil, derr end
  assert.are.equal("\r\n", data:sub(-2))
  return data:sub(1, -3)
end

local function get_json(srv, path)
  local resp = assert(srv:get(path))
  assert.are.equal(200, resp.status, resp.body)
  return cjson.decode(resp.body)
end

local function subscribers(srv, ch) return get_json(srv, "/subscribers?ch=" .. ch).subscribers end

describe("http channels", function()
  after_each(function() helpers.stop_all() end)

  describe("publish", function()
    it("writes every message once and in order to each member, chunked or close-delimited", function()
      local srv = helpers.start("http_chan_app", { "--workers", "1" })
      local a = open_stream(srv, "ch=room")
      local b = open_stream(srv, "ch=room&ch=lobby", true)
      local other = open_stream(srv, "ch=other")
      assert.are.equal("ready\n", next_piece(a))
      assert.are.equal("ready\n", next_piece(b))
      assert.are.equal("ready\n", next_piece(other))
      assert.is_true(a.chunked)
      assert.is_false(b.chunked)
      local r = get_json(srv, "/publish?ch=room&m=hello%0A&n=50")
      for i = 1, 50 do assert.are.equal(2, r.sent[i]) end
      for i = 1, 50 do
        assert.are.equal(i .. ":hello\n", next_piece(a))
        assert.are.equal(i .. ":hello\n", next_piece(b))
      end
      assert.is_true(a:quiet(0.2))
      assert.is_true(b:quiet(0.2))
      -- the member of another channel got none of them
      get_json(srv, "/publish?ch=other&m=yours%0A")
      assert.are.equal("1:yours\n", next_piece(other))
      assert.are.equal(1, get_json(srv, "/publish?ch=lobby&m=b%0A").sent[1])
      assert.are.equal("1:b\n", next_piece(b))
      assert.are.equal(0, get_json(srv, "/publish?ch=nobody&m=x").sent[1])
    end)
  end)

  describe("leaving", function()
    it("drops a response that finished, and one whose client went away", function()
      local srv = helpers.start("http_chan_app", { "--workers", "1" })
      local a = open_stream(srv, "ch=room&id=a")
      local b = open_stream(srv, "ch=room&id=b")
      local c = open_stream(srv, "ch=room&id=c")
      for _, s in ipairs { a, b, c } do next_piece(s) end
      assert.are.equal(3, subscribers(srv, "room"))
      get_json(srv, "/end?id=a")
      assert.are.equal("bye\n", next_piece(a))
      assert.are.equal(2, subscribers(srv, "room"))
      b:close()
      helpers.wait_for(function() return subscribers(srv, "room") == 1 end, 5)
      assert.are.equal(1, subscribers(srv, "room"))
      local r = get_json(srv, "/publish?ch=room&m=after%0A")
      assert.are.equal(1, r.sent[1])
      assert.are.equal("1:after\n", next_piece(c))
      assert.are.equal(nil, next_piece(a, 0.3)) -- the finished response got nothing more
    end)

    it("stays up and counts right when many clients disconnect mid-stream while messages go out", function()
      local srv = helpers.start("http_chan_app", { "--workers", "1" })
      local keep = open_stream(srv, "ch=crowd")
      next_piece(keep)
      local crowd = {}
      for i = 1, 200 do
        crowd[i] = open_stream(srv, "ch=crowd")
        next_piece(crowd[i])
      end
      assert.are.equal(201, subscribers(srv, "crowd"))
      for i = 1, 200, 2 do crowd[i]:close() end
      get_json(srv, "/publish?ch=crowd&m=x&size=2000&n=20")
      for i = 2, 200, 2 do crowd[i]:close() end
      get_json(srv, "/publish?ch=crowd&m=y%0A&n=5")
      helpers.wait_for(function() return subscribers(srv, "crowd") == 1 end, 5)
      assert.are.equal(1, subscribers(srv, "crowd"))
      for i = 1, 20 do assert.are.equal(i .. ":x", next_piece(keep):sub(1, #(i .. ":x"))) end
      for i = 1, 5 do assert.are.equal(i .. ":y\n", next_piece(keep)) end
      assert.are.equal(1, get_json(srv, "/publish?ch=crowd&m=z%0A").sent[1])
      assert.are.equal("1:z\n", next_piece(keep))
      assert.is_nil(srv:exited())
    end)

    it("unsubscribes one channel and keeps the others", function()
      local srv = helpers.start("http_chan_app", { "--workers", "1" })
      local a = open_stream(srv, "ch=room&ch=lobby&id=a")
      next_piece(a)
      assert.is_true(get_json(srv, "/unsub?id=a&ch=room").left)
      assert.is_false(get_json(srv, "/unsub?id=a&ch=room").left)
      assert.are.equal(0, subscribers(srv, "room"))
      assert.are.equal(0, get_json(srv, "/publish?ch=room&m=no%0A").sent[1])
      assert.are.equal(1, get_json(srv, "/publish?ch=lobby&m=yes%0A").sent[1])
      assert.are.equal("1:yes\n", next_piece(a))
    end)
  end)

  describe("a slow reader", function()
    it("is cut off once over the high-water mark while the others keep receiving", function()
      local srv = helpers.start("http_chan_app", { "--workers", "1" })
      local slow = open_stream(srv, "ch=room&id=slow")
      local fast = open_stream(srv, "ch=room&id=fast")
      next_piece(slow)
      next_piece(fast)
      slow.sock:setoption("keepalive", true)
      -- 64 KiB messages: the slow reader's socket buffers fill, then its send queue passes 256 KiB
      local got = 0
      for round = 1, 40 do
        get_json(srv, "/publish?ch=room&m=r" .. round .. "&size=65536&n=4")
        for _ = 1, 4 do
          local p = assert(next_piece(fast, 10))
          assert.are.equal(65537, #p)
          got = got + 1
        end
        if subscribers(srv, "room") == 1 then break end
      end
      assert.are.equal(1, subscribers(srv, "room"))
      srv:wait_log("stream closed slow", 1, 5)
      -- the slow one's connection ends after what was queued
      local rest, err = slow:read_until_close(10)
      assert.truthy(rest, err)
      assert.is_nil(srv:exited())
      assert.are.equal(1, get_json(srv, "/publish?ch=room&m=still%0A").sent[1])
      assert.are.equal("1:still\n", next_piece(fast))
      assert.truthy(got >= 4)
    end)
  end)

  describe("misuse", function()
    it("raises a clear error for a response whose head was not sent, that ended, or has a length", function()
      local srv = helpers.start("http_chan_app", { "--workers", "1" })
      local e = get_json(srv, "/misuse")
      assert.truthy(e.before_head:find("res:subscribe(): the response must be an open stream whose head was sent", 1, true), e.before_head)
      assert.truthy(e.name:find("channel name must be a string", 1, true), e.name)
      assert.truthy(e.empty:find("must not be empty", 1, true), e.empty)
      assert.truthy(e.publish_data:find("data must be a string", 1, true), e.publish_data)
      assert.are.equal("false", e.unsub_not_member)
      assert.are.equal("true false", e.twice)
      assert.are.equal("true 0", e.unsub)
      srv:wait_log("after_end: .*the response has ended", 1, 5)
      local r = assert(srv:get("/clen"))
      assert.are.equal("1234567890", r.body)
      srv:wait_log("clen: .*must be an open stream", 1, 5)
      assert.is_nil(srv:exited())
    end)
  end)
end)
