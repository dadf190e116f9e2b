-- bench/db/redis_app.lua: one Redis GET per request (moonfork.redis), for bench/db/run.
-- REDIS_PORT in the environment; answers the value of the key "bench:name".
local moonfork = require "moonfork"

local redis = moonfork.redis.client({ port = tonumber(os.getenv("REDIS_PORT") or "6379") })

moonfork.listen({ port = 8080 }, moonfork.http.createServer(function(req, res)
  local v, err = redis:get("bench:name")
  if not v then
    res:writeHead(500)
    return res:finish("redis: " .. tostring(err) .. "\n")
  end
  res:writeHead(200, { ["Content-Type"] = "text/plain" })
  res:finish(v)
end))
