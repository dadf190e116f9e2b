-- bench/crowd/ws_chat.lua: the chat's broadcast over WebSockets, for bench/crowd/run --proto ws
-- (contestant moonfork-ws). The same replicated log as examples/chat/server.lua (its chatlog.lua:
-- one global order over the workers' mesh); POST /messages {user,text} answers 201 {id} once the
-- message is numbered; GET /events upgrades to a WebSocket that gets every later message as one text
-- message, the JSON the SSE stream would carry. Nothing else: no history, presence or static files.
-- CROWD_WS_FANOUT=chan (bench/crowd/run's moonfork-wschan): each socket joins channel "chat"
-- (ws:subscribe) and the leader, which numbers every message, publishes each one once, in id order
-- (websocket.publish): every worker writes it to its own members in C, in one loop turn, in an order
-- that rotates per message. Otherwise the fan-out is the Lua loop below, in slices.
local moonfork = require "moonfork"
local cjson = require "cjson"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/../../examples/chat/?.lua;" .. package.path
local chatlog = require "chatlog"

local CHAN = os.getenv("CROWD_WS_FANOUT") == "chan"
local log
local sockets = {} -- ws -> the last id it was sent, for every open one in this worker

local function post_message(req, res)
  local ok, body = pcall(cjson.decode, req.body)
  if not ok or type(body) ~= "table" or type(body.user) ~= "string" or type(body.text) ~= "string" then
    return res:json({ error = "the body must be a JSON object with user and text" }, 400)
  end
  log:post(body.user, body.text, function(id)
    if not res.finished then res:json({ id = id }, 201) end
  end)
end

local server = moonfork.http.createServer(function(req, res)
  if req.path == "/messages" and req.method == "POST" then return post_message(req, res) end
  if req.path ~= "/events" then return res:json({ error = "not found" }, 404) end
  local ws = moonfork.websocket.upgrade(req, res)
  if not ws then return end
  if CHAN then
    ws:subscribe("chat")
    return
  end
  sockets[ws] = log.last -- from the next message on
  ws:on("close", function() sockets[ws] = nil end)
end)

local nodes = moonfork.listen({ port = 8080 }, server)
log = chatlog.new(nodes, { keep = 500, workers = moonfork.workers })
log:attach()

-- every new message to every socket, in id order, in slices of 2,000 sockets with a loop turn between
-- them (as examples/chat/server.lua does), so posts and mesh messages are read during a fan-out; each
-- socket keeps the last id it was sent, so one a pass reached late gets every message it lacks, in
-- order. One that has 256 KiB queued is too slow: close it.
local SLICE = 2000
local fanning, again = false, false

local function push(ws, last)
  local kept = log.log
  local newest = kept[#kept]
  if not newest or newest.id <= last then return last end
  local list = newest.prev == last and { newest } or log:after(last)
  for i = 1, #list do
    local ok = ws:send(list[i].json)
    if ok == nil then return nil end
    if ok == false then ws:close(1008, "too slow") return nil end
  end
  return newest.id
end

local function pass()
  local list, n = {}, 0
  for ws in pairs(sockets) do n = n + 1 list[n] = ws end
  for i = 1, n do
    local ws = list[i]
    local last = sockets[ws]
    if last then sockets[ws] = push(ws, last) end
    if i % SLICE == 0 and i < n then moonfork.sleep(0) end
  end
end

local published = 0 -- CHAN: the last id this worker has seen (published, when it leads)
local function publish_new()
  if log.leader == log.me and log.last > published then -- both "id:serial" (chatlog.lua)
    local list = log:after(published)
    for i = 1, #list do moonfork.websocket.publish("chat", list[i].json) end
  end
  published = log.last
end

log:listen(function()
  if CHAN then return publish_new() end
  if fanning then again = true return end
  fanning = true
  moonfork.setTimeout(0, function()
    repeat
      again = false
      local ok, err = pcall(pass)
      if not ok then moonfork.log("ws_chat: fan-out: " .. tostring(err)) end
    until not again
    fanning = false
  end)
end)

moonfork.on("drain", function()
  for ws in pairs(sockets) do ws:close(1001) end
end)
