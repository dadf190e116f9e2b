-- spec/chat_fanout_spec.lua: the chat's fan-out in slices (examples/chat/server.lua). A worker writes a
-- new message to its streams CHAT_FANOUT_SLICE at a time with a loop turn between slices, so it reads
-- and answers a post while a fan-out is still going; every stream still gets every message once and
-- in order, however the messages fall across a pass. CHAT_FANOUT_SLICE=1 makes each pass as long as
-- it can be (a loop turn per stream): 3,000 streams take longer to reach than the test takes to look.
--
-- Readers are raw sockets holding GET /events?since=0; a reader's ids are the "id: N" lines of what
-- it has received, read without blocking.
local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson"

local CHAT = os.getenv("CHAT_SPEC_SCRIPT") or (helpers.ROOT .. "/examples/chat/server.lua")

-- fanout: "lua" for the loop over streams in slices (CHAT_SSE_FANOUT=lua), nil for the chat's default,
-- the streams in a C channel (res:subscribe) written in one loop turn.
local function start_chat(workers, slice, fanout)
  return helpers.start_env(CHAT, { "--workers", tostring(workers), "--keepalive-timeout", "120" },
    { CHAT_FANOUT_SLICE = tostring(slice), CHAT_SSE_FANOUT = fanout or "c" })
end

local open = {} -- every reader's socket, closed after each test
local READERS = 3000 -- with CHAT_FANOUT_SLICE=1, a pass of 3,000 loop turns: longer than this
                     -- process can be kept waiting for the CPU on a busy machine

-- Raises this process's soft limit on open files up to the hard one (prlimit, util-linux).
local function raise_nofile(need)
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("*n")
  if f then f:close() end
  local p = io.popen("prlimit --pid " .. pid .. " --nofile --raw --noheadings")
  local soft, hard = (p:read("*a") or ""):match("(%S+)%s+(%S+)%s*$")
  p:close()
  if soft == "unlimited" or (tonumber(soft) or 0) >= need then return end
  os.execute("prlimit --pid " .. pid .. " --nofile=" .. hard .. ":" .. hard)
end

local function open_reader(port)
  local s = assert(socket.tcp())
  open[#open + 1] = s
  s:settimeout(5)
  assert(s:connect("127.0.0.1", port))
  assert(s:send("GET /events?since=0 HTTP/1.1\r\nHost: chat\r\n\r\n"))
  s:settimeout(0)
  return { sock = s, text = "" }
end

-- Appends what has arrived on r's socket, without blocking.
local function take(r)
  local data, err, partial = r.sock:receive(65536)
  local got = data or partial
  if got and #got > 0 then r.text = r.text .. got end
  assert(err ~= "closed", "a stream was closed by the server")
end

local function ids(r)
  local out = {}
  for id in r.text:gmatch("\nid: (%d+)\n") do out[#out + 1] = tonumber(id) end
  return out
end

-- Reads every reader until cond(r) holds for each of them.
local function pump(readers, cond, what)
  local ok = helpers.wait_for(function()
    local all = true
    for _, r in ipairs(readers) do
      if not cond(r) then
        take(r)
        if not cond(r) then all = false end
      end
    end
    if not all then socket.sleep(0.005) end
    return all
  end, 30)
  assert(ok, "readers did not all get " .. what)
end

local function post_request(text)
  return helpers.build_request("POST", "/messages", { { "Content-Type", "application/json" } },
    cjson.encode({ user = "fan", text = text }))
end


describe("chat fan-out in slices", function()
  after_each(function()
    for _, s in ipairs(open) do s:close() end
    open = {}
    helpers.stop_all()
  end)

  it("answers a post while the previous message is still being fanned out", function()
    raise_nofile(READERS + 200)
    local srv = start_chat(1, 1, "lua") -- (in C the streams are written in one loop turn: no slices)
    local p, q = srv:connect(), srv:connect() -- before the readers: select() takes fds under 1024
    local readers = {}
    for i = 1, READERS do readers[i] = open_reader(srv.port) end
    pump(readers, function(r) return r.text:find("retry: 2000", 1, true) ~= nil end, "the stream's start")
    -- both posts leave before the first is answered: the second is read while the first fans out
    assert(p:send(post_request("one")))
    assert(q:send(post_request("two")))
    local r2 = assert(q:receive())
    assert.equal(201, r2.status, r2.body)
    local lacking = 0
    for _, r in ipairs(readers) do
      take(r)
      if ids(r)[1] == nil then lacking = lacking + 1 end
    end
    assert.is_true(lacking > 0, "every stream had the first message before the second post was answered")
    local r1 = assert(p:receive())
    assert.equal(201, r1.status, r1.body)
    pump(readers, function(r) return #ids(r) >= 2 end, "both messages")
    for i, r in ipairs(readers) do assert.are.same({ 1, 2 }, ids(r), "reader " .. i) end
  end)

  for _, fanout in ipairs { "lua", "c" } do
  it("sends every stream every message once, in order, when posts come during a pass (" .. fanout .. ")", function()
    local srv = start_chat(2, 3, fanout)
    local readers = {}
    for i = 1, 300 do readers[i] = open_reader(srv.port) end
    pump(readers, function(r) return r.text:find("retry: 2000", 1, true) ~= nil end, "the stream's start")
    -- 30 posts, three connections at a time (spread over both workers), none waiting for a pass
    local conns = { srv:connect(), srv:connect(), srv:connect() }
    local n = 0
    for _ = 1, 10 do
      for _, c in ipairs(conns) do
        n = n + 1
        assert(c:send(post_request("m" .. n)))
      end
      for _, c in ipairs(conns) do
        local r = assert(c:receive())
        assert.equal(201, r.status, r.body)
      end
    end
    local want = {}
    for i = 1, n do want[i] = i end
    pump(readers, function(r) return #ids(r) >= n end, "all " .. n .. " messages")
    for i, r in ipairs(readers) do assert.are.same(want, ids(r), "reader " .. i) end
  end)
  end
end)
