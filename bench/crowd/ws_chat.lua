-- bench/crowd/ws_chat.lua: the chat's broadcast over WebSockets, for bench/crowd/run --proto ws
-- (contestant moonfork-ws). The same replicated log as examples/chat/server.lua (its chatlog.lua:
-- one global order over the workers' mesh); POST /messages {user,text} answers 201 {id} once the
-- message is numbered; GET /events upgrades to a WebSocket that gets every later message as one text
-- message, the JSON the SSE stream would carry. Nothing else: no history, presence or static files.
local moonfork = require "moonfork"
local cjson = require "cjson"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/../../examples/chat/?.lua;" .. package.path
local chatlog = require "chatlog"

local log
local sockets = {} -- ws -> true, for every open one in this worker

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
  sockets[ws] = true
  ws:on("close", function() sockets[ws] = nil end)
end)

local nodes = moonfork.listen({ port = 8080 }, server)
log = chatlog.new(nodes, { keep = 500, workers = moonfork.workers })
log:attach()

-- every new message to every socket, in id order; one that has 256 KiB queued is too slow: close it
local last_sent = 0
log:listen(function()
  for _, m in ipairs(log:after(last_sent)) do
    for ws in pairs(sockets) do
      if ws:send(m.json) == false then ws:close(1008, "too slow") end
    end
    last_sent = m.id
  end
end)

moonfork.on("drain", function()
  for ws in pairs(sockets) do ws:close(1001) end
end)
