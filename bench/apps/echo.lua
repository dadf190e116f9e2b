-- bench/apps/echo.lua: workload 4, a POSTed body (4 KB in the bench) echoed back.
local HEADERS = { ["Content-Type"] = "application/octet-stream" }
return function(req, res)
  res:writeHead(200, HEADERS)
  res:finish(req.body)
end
