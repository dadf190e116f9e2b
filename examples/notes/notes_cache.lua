-- examples/notes/notes_cache.lua: pages of the note list cached in Redis (moonfork.redis).
--
-- Keys: "notes:gen" is a generation number; a page lives at "notes:list:<gen>:<limit>:<cursor>"
-- with a TTL. A write bumps the generation (one INCR) after its row is committed and before it is
-- answered, so a list that starts after the answer looks under the new generation, finds nothing
-- and reads the database: no stale page is served after an acknowledged write. Pages of older
-- generations are never read again and expire by their TTL.
--
-- Redis is a cache, not a dependency: when it cannot be reached, lists read the database and writes
-- still succeed. A write whose INCR failed must not let a page cached before it be served once Redis
-- is back (it may come back with its data): its worker tells the others over the mesh, and every
-- worker then reads the database only, retrying the INCR in the background until its own lands.
local moonfork = require "moonfork"

local type, tostring = type, tostring

local _M = {}

local GEN = "notes:gen"
local PREFIX = "notes:list:"

local redis       -- nil: caching is off (NOTES_REDIS=off)
local ttl         -- seconds a page is kept
local down = false    -- the last Redis call failed (logged once per outage)
local pending = false -- a write's INCR failed: no cached reads here until one lands

local function failed(err)
  if not down then moonfork.log("notes: Redis unavailable, lists are read from the database: " .. tostring(err)) end
  down = true
end

local function worked()
  if down then moonfork.log("notes: Redis is back, lists are cached again") end
  down = false
end

-- open(spec, ttl_seconds): spec is a redis:// URL, a Unix socket path, or "off".
function _M.open(spec, ttl_seconds)
  ttl = ttl_seconds
  if spec == "off" or spec == "" then return end
  local opts = { timeout = 1000, connectTimeout = 1000 }
  if spec:sub(1, 1) == "/" then opts.path = spec else opts.url = spec end
  redis = moonfork.redis.client(opts)
end

-- get(limit, cursor) -> the cached page (a JSON string), "hit"
--                    | nil, "miss", key (store the page under key with put)
--                    | nil, "off" (no cache now: read the database, store nothing)
function _M.get(limit, cursor)
  if not redis or pending then return nil, "off" end
  local gen, err = redis:get(GEN)
  if gen == nil then
    failed(err)
    return nil, "off"
  end
  worked()
  if gen == moonfork.null then gen = "0" end
  local key = PREFIX .. gen .. ":" .. limit .. ":" .. (cursor or "first")
  local page = redis:get(key)
  if type(page) == "string" then return page, "hit" end
  return nil, "miss", key
end

function _M.put(key, page)
  local ok, err = redis:set(key, page, "EX", ttl)
  if not ok then failed(err) end
end

local SUSPECT = "notes-cache: a write could not bump the generation"
local nodes -- the mesh, to tell the other workers

local function retry_bump()
  while pending do
    if redis:incr(GEN) then
      pending = false
      worked()
    else
      moonfork.sleep(500)
    end
  end
end

-- No cached reads in this worker until an INCR of its own has landed.
local function suspect()
  if pending then return end
  pending = true
  moonfork.setTimeout(0, retry_bump)
end

-- attach(nodes): after moonfork.listen, so that workers hear of each other's failed INCRs.
function _M.attach(mesh)
  nodes = mesh
  if not redis then return end
  nodes:on("node", function(stream)
    stream:on("data", function(msg)
      if msg == SUSPECT then suspect() end
    end)
  end)
end

-- invalidate(): after a write is committed, before it is answered.
function _M.invalidate()
  if not redis then return end
  local ok, err = redis:incr(GEN)
  if ok then return worked() end
  failed(err)
  suspect()
  if nodes then nodes:broadcast(SUSPECT) end
end

return _M
