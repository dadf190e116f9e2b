-- bench/apps/server.lua: the moonfork contestant of bench/run and bench/smoke.
--   GET /        hello (hello.lua)       GET /json   cjson of a ~1 KB table (json.lua)
--   POST /echo   the body echoed (echo.lua)
-- Routing looks at the raw req.url (no percent-decoding), as nginx's locations and the Node peer do.
local moonfork = require "moonfork"
local hello, json, echo = require "hello", require "json", require "echo"

local server = moonfork.http.createServer(function(req, res)
  local url = req.url
  if url == "/json" then return json(req, res) end
  if url == "/echo" then return echo(req, res) end
  return hello(req, res)
end)

moonfork.listen({ port = 8080 }, server)
