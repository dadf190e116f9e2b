-- bench/shdict/app.lua: moonfork's side of the shared-dict bench (bench/shdict/run).
-- GET /get, /set, /incr: 100 operations each; POST /go?op=get&n=N&id=ID starts the timer loop in
-- every worker; GET /result?id=ID reports it; GET / answers "Hello, World!" (the bench waits for it).
local moonfork = require "moonfork"
local ops = require "ops"

moonfork.listen({ port = 8080, shared = { bench = "1m" } }, function(req, res)
  local dict, path = moonfork.shared.bench, req.path
  if path == "/get" or path == "/set" or path == "/incr" then
    ops.request(dict, path:sub(2))
    return res:finish("ok\n")
  elseif path == "/fill" then
    ops.fill(dict)
    return res:finish("ok\n")
  elseif path == "/go" then
    dict:set("go", req.query.op .. " " .. req.query.n .. " " .. req.query.id)
    return res:finish("ok\n")
  elseif path == "/result" then
    return res:finish(ops.result(dict, req.query.id) .. "\n")
  end
  res:finish("Hello, World!")
end)

moonfork.setInterval(5, function() ops.poll(moonfork.shared.bench, moonfork.pid) end)
