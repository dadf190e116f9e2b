-- bench/db/pg_app.lua: the moonfork contestant of bench/db/pg-run. GET /item/N answers the JSON of
-- row N of bench_items, one primary-key SELECT through moonfork.pg (PG_CONNINFO, pool of PG_POOL).
local moonfork = require "moonfork"

local db = moonfork.pg.pool({ conninfo = os.getenv("PG_CONNINFO"), size = tonumber(os.getenv("PG_POOL") or "8") })
local SQL = "SELECT id, title, n FROM bench_items WHERE id = $1"
local sub, tonumber = string.sub, tonumber

moonfork.listen({ port = 8080 }, function(req, res)
  local id = tonumber(sub(req.path, 7)) -- "/item/N"
  if not id then
    res:writeHead(404)
    return res:finish("no such route\n")
  end
  local rows, err = db:query(SQL, id)
  if not rows then
    res:writeHead(500)
    return res:finish(err .. "\n")
  end
  if not rows[1] then
    res:writeHead(404)
    return res:finish("no such item\n")
  end
  res:json(rows[1])
end)
