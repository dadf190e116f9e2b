-- bench/proxy/floor.lua: not a proxy, a yardstick for bench/proxy/run (contestant moonfork-floor): the
-- least a moonfork worker can do for the proxy workload through moonfork.socket: a fixed GET, no
-- headers passed on, the head read with receiveuntil and the length found with a pattern, the body
-- with receive(n), the connection back into its pool. What examples/proxy.lua costs over this is the
-- HTTP client's and the proxy's own work.
local moonfork = require "moonfork"
local tcp = moonfork.socket.tcp
local find, match, sub = string.find, string.match, string.sub

local ups = {}
for host, port in (os.getenv("PROXY_UPSTREAMS") or "127.0.0.1:8081"):gmatch("([^,:]+):(%d+)") do
  ups[#ups + 1] = { host = host, port = tonumber(port) }
end
local next_up = 1
local REQUEST = "GET / HTTP/1.1\r\nHost: upstream\r\n\r\n"
local TEXT = { ["Content-Type"] = "text/plain" }

moonfork.listen({ port = 8080 }, moonfork.http.createServer(function(_, res)
  local up = ups[next_up]
  next_up = next_up % #ups + 1
  local s = tcp()
  local ok, err = s:connect(up.host, up.port, { pool_size = 64 })
  if ok then ok, err = s:send(REQUEST) end
  local head = ok and s:receiveuntil("\r\n\r\n")()
  local len = head and tonumber(match(head, "\n[Cc]ontent%-[Ll]ength: *(%d+)"))
  local body = len and s:receive(len)
  if not body then
    s:close()
    res:writeHead(502, TEXT)
    return res:finish("502 Bad Gateway\n")
  end
  s:setkeepalive()
  res:writeHead(200, TEXT)
  res:finish(body)
end))
