-- spec/ws_client.lua: a raw WebSocket client over luasocket (spec/helpers' Conn) for the specs: the
-- handshake, frames built byte by byte (any opcode, reserved bits, masked or not, fragmented), and a
-- frame reader. Nothing here is clever on purpose: a spec says exactly which bytes go out.
--
--   local wsc = require "spec.ws_client"
--   local c, resp = wsc.open(port, "/echo", { ["Sec-WebSocket-Protocol"] = "chat" })
--   c:send(wsc.frame(wsc.TEXT, "hi"))
--   local f = wsc.read_frame(c)        -- { fin, rsv1, opcode, payload }
local helpers = require "spec.helpers"
local bit32 = require "bit32"

local char, byte, concat, floor = string.char, string.byte, table.concat, math.floor

local M = { CONT = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PING = 9, PONG = 10 }
M.KEY = "dGhlIHNhbXBsZSBub25jZQ=="
M.ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" -- RFC 6455 §1.3's example

-- Sends an upgrade request for `path` with these headers (false drops a default one); returns the
-- connection and the parsed response (101 or the refusal). opts.method (default GET); opts.early:
-- bytes sent in the same write as the request (frames before the 101 came back).
function M.open(port, path, headers, opts)
  local h = { Host = "127.0.0.1", Upgrade = "websocket", Connection = "Upgrade", ["Sec-WebSocket-Key"] = M.KEY,
    ["Sec-WebSocket-Version"] = "13" }
  for k, v in pairs(headers or {}) do h[k] = v end
  local lines = { ((opts and opts.method) or "GET") .. " " .. path .. " HTTP/1.1" }
  for k, v in pairs(h) do
    if v then lines[#lines + 1] = k .. ": " .. v end
  end
  local c = assert(helpers.connect(port))
  assert(c:send(concat(lines, "\r\n") .. "\r\n\r\n" .. (opts and opts.early or "")))
  local resp, err = c:receive()
  return c, resp, err
end

-- XOR of payload with a 4-byte key (a string).
local function mask(payload, key)
  local out, k = {}, { byte(key, 1, 4) }
  for i = 1, #payload do out[i] = char(bit32.bxor(byte(payload, i), k[(i - 1) % 4 + 1])) end
  return concat(out)
end

local function be(n, bytes)
  local t = {}
  for i = bytes, 1, -1 do
    t[i] = char(n % 256)
    n = floor(n / 256)
  end
  return concat(t)
end

-- One frame. opts: fin (default true), rsv (the three bits as a number 0-7: 4 is RSV1), unmasked,
-- key (4 bytes; default a fixed one), len (the length to claim, default #payload).
function M.frame(opcode, payload, opts)
  opts = opts or {}
  payload = payload or ""
  local fin = opts.fin == false and 0 or 128
  local b0 = fin + (opts.rsv or 0) * 16 + opcode
  local len, mbit = opts.len or #payload, opts.unmasked and 0 or 128
  local head
  if len < 126 then
    head = char(b0, mbit + len)
  elseif len < 65536 then
    head = char(b0, mbit + 126) .. be(len, 2)
  else
    head = char(b0, mbit + 127) .. be(len, 8)
  end
  if opts.unmasked then return head .. payload end
  local key = opts.key or "\55\250\33\61"
  return head .. key .. mask(payload, key)
end

-- A close frame's payload.
function M.close_payload(code, reason)
  return be(code, 2) .. (reason or "")
end

-- Reads one (unmasked, server) frame: { fin, rsv1, opcode, payload, code, reason } (code and reason
-- for close frames), or nil, "closed" / "timeout".
function M.read_frame(c, timeout)
  local deadline = helpers.now() + (timeout or helpers.DEADLINE)
  local h, err = c:read_n(2, deadline)
  if not h then return nil, err end
  local b0, b1 = byte(h, 1, 2)
  local len = b1 % 128
  if len == 126 then
    local x = assert(c:read_n(2, deadline))
    len = byte(x, 1) * 256 + byte(x, 2)
  elseif len == 127 then
    local x = assert(c:read_n(8, deadline))
    len = 0
    for i = 1, 8 do len = len * 256 + byte(x, i) end
  end
  local payload = len > 0 and assert(c:read_n(len, deadline)) or ""
  local f = { fin = b0 >= 128, rsv1 = floor(b0 / 64) % 2 == 1, opcode = b0 % 16, payload = payload,
    masked = b1 >= 128 }
  if f.opcode == M.CLOSE and #payload >= 2 then
    f.code, f.reason = byte(payload, 1) * 256 + byte(payload, 2), payload:sub(3)
  end
  return f
end

-- Reads frames until a close frame; returns it (pings and others before it are skipped).
function M.read_close(c, timeout)
  while true do
    local f, err = M.read_frame(c, timeout)
    if not f then return nil, err end
    if f.opcode == M.CLOSE then return f end
  end
end

return M
