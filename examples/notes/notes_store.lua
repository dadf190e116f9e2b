-- examples/notes/notes_store.lua: the notes in PostgreSQL (moonfork.pg): the schema, made when
-- missing, and one function per operation. Every function returns its result, or nil and an error
-- table { status = 503 | 500, error = "..." } the handler can send as it is.
--
-- The schema is made once per worker: at start (a timer) and, while that has not worked (the
-- database was down), again before each operation. Several workers may do it at once: the
-- statements run in a transaction that first takes an advisory lock, so they never race on the
-- catalog (two concurrent CREATE TABLE IF NOT EXISTS can both try to add the table's row type and
-- one fails with a unique violation on pg_type).
local moonfork = require "moonfork"

local tostring, find, min = tostring, string.find, math.min

local _M = {}

local SCHEMA_LOCK = 7283901 -- any number: the key of the advisory lock taken while making the schema

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS notes (
  id         bigserial   PRIMARY KEY,
  title      text        NOT NULL,
  body       text        NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
)]]

-- Columns as the API shows them: times in UTC, ISO 8601 with milliseconds.
local COLUMNS = [[id, title, body,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at]]

local db
local schema_ready = false

-- SQLSTATE classes and codes that mean "the database is not there" rather than "this query is wrong".
local function unavailable(err, code)
  if code then
    return find(code, "^08") ~= nil or code == "57P01" or code == "57P02" or code == "57P03"
      or code == "53300"
  end
  return find(err, "^timeout: ") ~= nil or find(err, "^closed: ") ~= nil
end

local function failure(err, code)
  if unavailable(err, code) then
    return { status = 503, error = "the database is unavailable: " .. err }
  end
  moonfork.log("notes: database error: " .. tostring(err))
  return { status = 500, error = "database error" }
end

-- Makes the table when it is missing: true | nil, failure.
local function ensure_schema()
  if schema_ready then return true end
  local ok, err, code = db:transaction(function(tx)
    tx:query("SET LOCAL client_min_messages = warning") -- no NOTICE that the table exists
    tx:query("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
    tx:query(SCHEMA)
  end)
  if not ok then return nil, failure(err, code) end
  schema_ready = true
  return true
end

-- One statement after the schema is there: rows | nil, failure.
local function query(sql, ...)
  local ok, fail = ensure_schema()
  if not ok then return nil, fail end
  local rows, err, code = db:query(sql, ...)
  if not rows then return nil, failure(err, code) end
  return rows
end

-- open(conninfo, size): the pool, and the schema made in each worker as soon as it starts.
function _M.open(conninfo, size)
  db = moonfork.pg.pool({ conninfo = conninfo, size = size, timeout = 5000, connect_timeout = 3000,
    query_timeout = 10000 })
  moonfork.setTimeout(0, function()
    local ok, fail = ensure_schema()
    if not ok then moonfork.log("notes: schema not made yet (will retry on first use): " .. fail.error) end
  end)
end

-- create(title, body) -> note | nil, failure
function _M.create(title, body)
  local rows, fail = query("INSERT INTO notes (title, body) VALUES ($1, $2) RETURNING " .. COLUMNS, title, body)
  if not rows then return nil, fail end
  return rows[1]
end

-- get(id) -> note | false (no such note) | nil, failure
function _M.get(id)
  local rows, fail = query("SELECT " .. COLUMNS .. " FROM notes WHERE id = $1", id)
  if not rows then return nil, fail end
  return rows[1] or false
end

-- update(id, title, body) -> note | false | nil, failure
function _M.update(id, title, body)
  local rows, fail = query("UPDATE notes SET title = $2, body = $3, updated_at = now() WHERE id = $1 RETURNING "
    .. COLUMNS, id, title, body)
  if not rows then return nil, fail end
  return rows[1] or false
end

-- delete(id) -> true | false | nil, failure
function _M.delete(id)
  local rows, fail = query("DELETE FROM notes WHERE id = $1", id)
  if not rows then return nil, fail end
  return rows.affected > 0
end

-- list(limit, cursor) -> notes, next_cursor | nil, failure. Keyset pagination, newest first: a page
-- is the `limit` notes with an id below `cursor` (all when nil); next_cursor is the last id of the
-- page when more follow, else nil. One row more than asked says whether more follow.
function _M.list(limit, cursor)
  local rows, fail
  if cursor then
    rows, fail = query("SELECT " .. COLUMNS .. " FROM notes WHERE id < $1 ORDER BY id DESC LIMIT $2", cursor, limit + 1)
  else
    rows, fail = query("SELECT " .. COLUMNS .. " FROM notes ORDER BY id DESC LIMIT $1", limit + 1)
  end
  if not rows then return nil, fail end
  local notes = {}
  for i = 1, min(#rows, limit) do notes[i] = rows[i] end
  local next_cursor = #rows > limit and notes[limit].id or nil
  return notes, next_cursor
end

return _M
