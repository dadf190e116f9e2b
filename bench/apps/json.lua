-- bench/apps/json.lua: workload 3, a JSON response encoded with cjson from a ~1 KB Lua table
-- (bench/lib/payload.json, decoded once at load; every contestant serves the same table).
local cjson = require "cjson"
local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local f = assert(io.open(dir .. "/../lib/payload.json", "rb"))
local payload = cjson.decode(f:read("*a"))
f:close()
return function(req, res)
  res:json(payload)
end
