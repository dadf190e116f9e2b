-- bench/ws/app.lua: the moonfork contestant of the WebSocket benches (bench/ws/run).
-- /echo sends every message back; /sub receives every message sent on /pub, by any client on any
-- worker: the worker that gets it writes it to its own subscribers and to every peer over the mesh
-- (nodes:broadcast), and each peer writes it to its subscribers.
--   moonfork --port 8080 --workers 2 bench/ws/app.lua
local moonfork = require "moonfork"

local upgrade = moonfork.websocket.upgrade
local subs = {} -- ws -> true: this worker's subscribers
local nodes

local function deliver(msg)
  for ws in pairs(subs) do ws:send(msg) end
end

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
    subs[ws] = true
    ws:on("close", function() subs[ws] = nil end)
  else
    ws:on("message", function(data)
      nodes:broadcast(data)
      deliver(data)
    end)
  end
end)

nodes = moonfork.listen({ port = 8080 }, server)
nodes:on("node", function(stream) stream:on("data", deliver) end)
