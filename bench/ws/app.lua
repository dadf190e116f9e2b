-- bench/ws/app.lua: the moonfork contestant of the WebSocket benches (bench/ws/run).
-- /echo sends every message back; /sub subscribes to channel "bench"; every message sent on /pub is
-- published to it (moonfork.websocket.publish): each worker writes it to its own subscribers in C, the
-- frame built once, and the publishing worker passes it to the others over the mesh.
--   moonfork --port 8080 --workers 2 bench/ws/app.lua
local moonfork = require "moonfork"

local websocket = moonfork.websocket
local upgrade, publish = websocket.upgrade, websocket.publish

local server = moonfork.http.createServer(function(req, res)
  local path = req.path
  if path ~= "/echo" and path ~= "/sub" and path ~= "/pub" then
    return res:json({ error = "not found" }, 404)
  end
  local ws = upgrade(req, res)
  if not ws then return end
  if path == "/echo" then
    ws:on("message", function(data, kind)
      if kind == "binary" then ws:send(data, "binary") else ws:send(data) end
    end)
  elseif path == "/sub" then
    ws:subscribe("bench")
  else
    ws:on("message", function(data) publish("bench", data) end)
  end
end)

moonfork.listen({ port = 8080 }, server)
