-- examples/hello.lua: the smallest moonfork app; every path answers "Hello, World!".
local moonfork = require "moonfork"

local server = moonfork.http.createServer(function(req, res)
  res:writeHead(200, { ["Content-Type"] = "text/plain" })
  res:finish("Hello, World!\n")
end)

moonfork.listen({ port = 8080 }, server)
