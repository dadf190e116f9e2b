-- bench/apps/hello.lua: workloads 1 and 2 (hello, with and without keep-alive).
local HEADERS = { ["Content-Type"] = "text/plain" }
return function(req, res)
  res:writeHead(200, HEADERS)
  res:finish("Hello, World!\n")
end
