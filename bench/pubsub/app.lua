-- bench/pubsub/app.lua: how messages published to a Redis channel reach every worker of a host, two
-- ways (PUBSUB_MODE): "each" (every worker subscribes: nodes:subscribe) or "relay" (the mesh leader
-- alone subscribes and passes each message on with nodes:broadcast). Each message carries its publish
-- time (µs); every worker records publish-to-delivery latencies and GET /stats gathers them.
local moonfork = require "moonfork"
local cjson = require "cjson"

local ffi = require "ffi"

local MODE = os.getenv("PUBSUB_MODE") or "each"
local OUT = os.getenv("PUBSUB_OUT") -- each worker writes OUT/worker-N.json at exit
local lat, got = {}, 0

-- the wall clock in µs (the publisher stamps each message with its own wall clock)
pcall(ffi.cdef, [[
  struct bench_timeval { long sec; long usec; };
  int bench_gettimeofday(struct bench_timeval *tv, void *tz) __asm__("gettimeofday");
]])
local tv = ffi.new("struct bench_timeval")
local function now_us()
  ffi.C.bench_gettimeofday(tv, nil)
  return tonumber(tv.sec) * 1e6 + tonumber(tv.usec)
end

local function deliver(message)
  local t0 = tonumber(message:match("^(%d+)"))
  got = got + 1
  if t0 then lat[#lat + 1] = (now_us() - t0) / 1000 end -- ms
end

local nodes
nodes = moonfork.listen({}, function(req, res)
  res:json({ mode = MODE })
end)

moonfork.on("exit", function()
  if not OUT then return end
  local f = io.open(OUT .. "/worker-" .. nodes.id .. ".json", "w")
  f:write(cjson.encode({ worker = nodes.id, got = got, lat = lat }))
  f:close()
end)

if MODE == "each" then
  nodes:subscribe("bench", deliver)
else
  local sub
  nodes:on("leader", function(id)
    if id == nodes.id and not sub then
      sub = moonfork.redis.client({ url = moonfork.redisUrl }):subscribe("moonfork:nodes:bench", function(m)
        deliver(m)
        nodes:broadcast(m)
      end)
    end
  end)
  nodes:on("node", function(stream) stream:on("data", deliver) end)
end
