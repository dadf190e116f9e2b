-- bench/peers/nginx_handlers.lua: the Lua handlers of the nginx + lua-nginx-module contestant
-- (loaded once per worker by init_by_lua_block in nginx-lua.conf). The same work as
-- bench/apps/*.lua: hello; cjson of the ~1 KB table in bench/lib/payload.json; the body echoed.
local ngx = ngx
local cjson = require "cjson"

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local f = assert(io.open(dir .. "/../lib/payload.json", "rb"))
local payload = cjson.decode(f:read("*a"))
f:close()

local _M = {}

function _M.hello()
  local h = ngx.header
  h["Content-Type"] = "text/plain"
  h["Content-Length"] = 14
  ngx.print("Hello, World!\n")
end

function _M.json()
  local body = cjson.encode(payload)
  local h = ngx.header
  h["Content-Type"] = "application/json"
  h["Content-Length"] = #body
  ngx.print(body)
end

function _M.echo()
  ngx.req.read_body()
  local body = ngx.req.get_body_data() or ""
  local h = ngx.header
  h["Content-Type"] = "application/octet-stream"
  h["Content-Length"] = #body
  ngx.print(body)
end

return _M
