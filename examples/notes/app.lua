-- examples/notes/app.lua: notes, a small real application: a JSON API over PostgreSQL with the
-- list cached in Redis, and a page (public/) that uses it.
--
--   NOTES_PG="host=/run/postgresql dbname=notes" NOTES_REDIS=redis://127.0.0.1:6379 \
--     moonfork examples/notes/app.lua                    then open http://127.0.0.1:8080
--
-- API (every answer is JSON; an error is {"error": "what is wrong"}):
--   POST   /api/notes                {"title", "body"?}  -> 201 the note (Location: /api/notes/ID)
--   GET    /api/notes?limit=&cursor=                     -> 200 {"notes": [...], "next_cursor": ID|null}
--   GET    /api/notes/ID                                 -> 200 the note
--   PUT    /api/notes/ID             {"title", "body"?}  -> 200 the note
--   DELETE /api/notes/ID                                 -> 204
-- 400 names what is wrong with the input, 404 an unknown note, 503 a database that cannot be reached.
-- A note: {"id", "title", "body", "created_at", "updated_at"} (times in UTC, ISO 8601).
local moonfork = require "moonfork"
local cjson = require "cjson"
local store = require "notes_store"
local cache = require "notes_cache"

local encode, decode = cjson.encode, cjson.decode
local type, pairs, pcall, tonumber, tostring, concat = type, pairs, pcall, tonumber, tostring, table.concat
local byte, find, match, sub = string.byte, string.find, string.match, string.sub

local MAX_TITLE, MAX_BODY = 200, 10000 -- characters
local DEFAULT_LIMIT, MAX_LIMIT = 20, 100

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

store.open(env("NOTES_PG", "host=/run/postgresql dbname=notes"), tonumber(env("NOTES_PG_POOL", "8")))
cache.open(env("NOTES_REDIS", "redis://127.0.0.1:6379"), tonumber(env("NOTES_CACHE_TTL", "30")))

local serve_static = moonfork.static("public")

---------------------------------------------------------------------------------------------------
-- input

-- The number of characters of s, or nil when s is not valid UTF-8 (overlong forms and surrogates
-- included: PostgreSQL would refuse them).
local function utf8_len(s)
  local n, i, len = 0, 1, #s
  while i <= len do
    local c, extra, lo, hi = byte(s, i), 0, 0x80, 0xBF
    if c >= 0x80 then
      if c >= 0xC2 and c <= 0xDF then extra = 1
      elseif c >= 0xE0 and c <= 0xEF then extra = 2
      elseif c >= 0xF0 and c <= 0xF4 then extra = 3
      else return nil end
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F
      elseif c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      for j = i + 1, i + extra do
        local b = byte(s, j)
        if not b or b < lo or b > hi then return nil end
        lo, hi = 0x80, 0xBF
      end
    end
    i, n = i + extra + 1, n + 1
  end
  return n
end

-- A text field of the input: the string | nil, what is wrong.
local function text_field(obj, name, max, required)
  local v = obj[name]
  if v == nil then
    if required then return nil, name .. " is required" end
    return ""
  end
  if type(v) ~= "string" then return nil, name .. " must be a string" end
  if find(v, "%z") then return nil, name .. " must not contain NUL characters" end
  local n = utf8_len(v)
  if not n then return nil, name .. " is not valid UTF-8" end
  if n > max then return nil, name .. " is longer than " .. max .. " characters" end
  return v
end

-- The title and body of a POST or PUT: title, body | nil, what is wrong.
local function note_input(req)
  local ok, obj = pcall(decode, req.body)
  if not ok then return nil, "invalid JSON: " .. tostring(obj) end
  if type(obj) ~= "table" or obj[1] ~= nil then return nil, "the body must be a JSON object" end
  for k in pairs(obj) do
    if k ~= "title" and k ~= "body" then return nil, "unknown field: " .. tostring(k) .. " (title and body are)" end
  end
  local title, err = text_field(obj, "title", MAX_TITLE, true)
  if not title then return nil, err end
  if not find(title, "%S") then return nil, "title must not be empty" end
  local body
  body, err = text_field(obj, "body", MAX_BODY, false)
  if not body then return nil, err end
  return title, body
end

-- A positive whole number below 10^15 (ids are bigserial; they stay exact as Lua numbers) or nil.
local function id_of(s)
  if type(s) ~= "string" or not match(s, "^[1-9]%d*$") or #s > 15 then return nil end
  return tonumber(s)
end

local function query_one(req, name)
  local v = req.query[name]
  if type(v) == "table" then return false end -- repeated
  return v
end

-- limit, cursor of a list request | nil, what is wrong.
local function page_args(req)
  local limit, cursor = query_one(req, "limit"), query_one(req, "cursor")
  if limit == nil or limit == "" then
    limit = DEFAULT_LIMIT
  else
    limit = limit and match(limit, "^%d+$") and tonumber(limit)
    if not limit or limit < 1 or limit > MAX_LIMIT then
      return nil, "bad limit: must be a whole number from 1 to " .. MAX_LIMIT
    end
  end
  if cursor == nil or cursor == "" then return limit, nil end
  cursor = id_of(cursor)
  if not cursor then return nil, "bad cursor: must be the next_cursor of a previous page" end
  return limit, cursor
end

---------------------------------------------------------------------------------------------------
-- answers

local function fail(res, status, why)
  res:json({ error = why }, status)
end

local function not_found(res, id)
  fail(res, 404, "note " .. id .. " not found")
end

local function send_json(res, status, text, cache_state)
  local headers = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" }
  if cache_state then headers["X-Cache"] = cache_state end
  res:writeHead(status, headers)
  res:finish(text)
end

-- {"notes": [...], "next_cursor": N|null}: made by hand, as cjson writes an empty list as {}.
local function page_json(notes, next_cursor)
  local parts = {}
  for i = 1, #notes do parts[i] = encode(notes[i]) end
  return '{"notes":[' .. concat(parts, ",") .. '],"next_cursor":' .. (next_cursor and tostring(next_cursor) or "null") .. "}"
end

---------------------------------------------------------------------------------------------------
-- routes

local function list_notes(req, res)
  local limit, cursor = page_args(req)
  if not limit then return fail(res, 400, cursor) end
  local page, state, key = cache.get(limit, cursor)
  if page then return send_json(res, 200, page, state) end
  local notes, next_cursor = store.list(limit, cursor)
  if not notes then return fail(res, next_cursor.status, next_cursor.error) end
  page = page_json(notes, next_cursor)
  if key then cache.put(key, page) end
  send_json(res, 200, page, state)
end

local function create_note(req, res)
  local title, body = note_input(req)
  if not title then return fail(res, 400, body) end
  local note, failure = store.create(title, body)
  if not note then return fail(res, failure.status, failure.error) end
  cache.invalidate()
  res:setHeader("Location", "/api/notes/" .. note.id)
  res:json(note, 201)
end

local function get_note(res, id)
  local note, failure = store.get(id)
  if note == nil then return fail(res, failure.status, failure.error) end
  if not note then return not_found(res, id) end
  res:json(note)
end

local function update_note(req, res, id)
  local title, body = note_input(req)
  if not title then return fail(res, 400, body) end
  local note, failure = store.update(id, title, body)
  if note == nil then return fail(res, failure.status, failure.error) end
  if not note then return not_found(res, id) end
  cache.invalidate()
  res:json(note)
end

local function delete_note(res, id)
  local deleted, failure = store.delete(id)
  if deleted == nil then return fail(res, failure.status, failure.error) end
  if not deleted then return not_found(res, id) end
  cache.invalidate()
  res:writeHead(204)
  res:finish()
end

local function method_not_allowed(res, allow)
  res:setHeader("Allow", allow)
  fail(res, 405, "method not allowed (" .. allow .. ")")
end

local function api(req, res)
  local path, method = req.path, req.method
  if path == "/api/notes" then
    if method == "GET" then return list_notes(req, res) end
    if method == "POST" then return create_note(req, res) end
    return method_not_allowed(res, "GET, POST")
  end
  local seg = match(path, "^/api/notes/([^/]*)$")
  if not seg then return fail(res, 404, "not found") end
  if method ~= "GET" and method ~= "PUT" and method ~= "DELETE" then
    return method_not_allowed(res, "GET, PUT, DELETE")
  end
  local id = id_of(seg)
  if not id then return fail(res, 400, "bad id: must be a positive whole number") end
  if method == "GET" then return get_note(res, id) end
  if method == "PUT" then return update_note(req, res, id) end
  delete_note(res, id)
end

local server = moonfork.http.createServer(function(req, res)
  if sub(req.path, 1, 5) == "/api/" or req.path == "/api" then return api(req, res) end
  if serve_static(req, res) then return end
  fail(res, 404, "not found")
end)

local nodes = moonfork.listen({ port = 8080 }, server)
cache.attach(nodes) -- a write whose INCR failed is told to every worker
