-- moonfork.static: serves files from a directory, safely.
--
--   local serve = moonfork.static("public")          -- relative to the script's directory
--   ... if serve(req, res) then return end           -- true when it answered
--
-- A relative dir is taken from the script's directory. GET and HEAD only. Content-Type from the extension, Content-Length, Last-Modified and ETag, with
-- 304 for If-None-Match / If-Modified-Since. A path with a ".." segment (percent-encoded or not) gets
-- 403; a file that resolves (through symlinks) outside the directory gets 404, as if absent. A
-- directory serves its index.html. Files are sent in 64 KiB pieces, waiting for the client to take
-- each ("drain") before reading the next, so a large file is never held whole in memory.
local core = require "moonfork.core"

local type, tonumber, ipairs, error, format = type, tonumber, ipairs, error, string.format
local find, sub, lower, match, gmatch, byte = string.find, string.sub, string.lower, string.match,
  string.gmatch, string.byte
local concat, open, date = table.concat, io.open, os.date
local stat, realpath = core.fs_stat, core.fs_realpath

local CHUNK = 64 * 1024

local _M = { _VERSION = "0.1.0" }

local types = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8", css = "text/css; charset=utf-8",
  js = "text/javascript; charset=utf-8", mjs = "text/javascript; charset=utf-8",
  json = "application/json", txt = "text/plain; charset=utf-8", md = "text/markdown; charset=utf-8",
  xml = "application/xml", svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg",
  jpeg = "image/jpeg", gif = "image/gif", webp = "image/webp", ico = "image/x-icon", avif = "image/avif",
  woff = "font/woff", woff2 = "font/woff2", ttf = "font/ttf", otf = "font/otf", wasm = "application/wasm",
  pdf = "application/pdf", mp4 = "video/mp4", webm = "video/webm", mp3 = "audio/mpeg", ogg = "audio/ogg",
  wav = "audio/wav", zip = "application/zip", gz = "application/gzip", csv = "text/csv; charset=utf-8",
  map = "application/json",
}
_M.types = types

local function content_type(path)
  local ext = match(path, "%.([%w]+)$")
  return ext and types[lower(ext)] or "application/octet-stream"
end

local function http_date(t)
  return date("!%a, %d %b %Y %H:%M:%S GMT", t)
end

local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9,
  Oct = 10, Nov = 11, Dec = 12 }

-- "Sun, 06 Nov 1994 08:49:37 GMT" -> seconds since the epoch (UTC), or nil.
local function parse_http_date(s)
  local d, mon, y, h, mi, sec = match(s or "", "^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  local m = months[mon]
  if not m then return nil end
  y, m, d = tonumber(y), m, tonumber(d)
  -- days from civil (proleptic Gregorian), so no local time zone gets involved
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) / 400
  era = era - era % 1
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) / 5
  doy = doy - doy % 1 + d - 1
  local doe = yoe * 365 + (yoe - yoe % 4) / 4 - (yoe - yoe % 100) / 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end
_M.parse_http_date = parse_http_date

local function send_file(res, path, size)
  local f, err = open(path, "rb")
  if not f then
    res:writeHead(500, { ["Content-Type"] = "text/plain" })
    res:finish("cannot read file\n")
    core.log("static: " .. tostring(err))
    return
  end
  local left = size
  while left > 0 and not res.finished do
    local piece = f:read(left < CHUNK and left or CHUNK)
    if not piece then break end
    left = left - #piece
    if left == 0 then
      res:finish(piece)
    elseif res:write(piece) == false then
      res:drain()
    end
  end
  f:close()
  if not res.finished then res:finish() end -- the file shrank while being sent
end

-- Returns serve(req, res) for the files under `dir`.
function _M.new(dir, opts)
  if type(dir) ~= "string" then error("moonfork.static(dir): dir must be a string", 2) end
  opts = opts or {}
  if sub(dir, 1, 1) ~= "/" then dir = (match(core.script, "^(.*)/[^/]*$") or ".") .. "/" .. dir end
  local root, err = realpath(dir)
  if not root then error("moonfork.static: cannot use directory '" .. dir .. "': " .. err, 2) end
  local index = opts.index == nil and "index.html" or opts.index
  local prefix = opts.prefix or "/"

  return function(req, res)
    local method = req.method
    if method ~= "GET" and method ~= "HEAD" then return false end
    local path = req.path
    if sub(path, 1, #prefix) ~= prefix then return false end
    path = sub(path, #prefix + 1)
    local parts = {}
    for seg in gmatch(path, "[^/]+") do
      if seg == ".." or find(seg, "\0", 1, true) or find(seg, "\\", 1, true) then
        res:writeHead(403, { ["Content-Type"] = "text/plain" })
        res:finish("Forbidden\n")
        return true
      end
      if seg ~= "." then parts[#parts + 1] = seg end
    end
    local file = root .. "/" .. concat(parts, "/")
    local real = realpath(file)
    if not real then return false end
    if real ~= root and sub(real, 1, #root + 1) ~= root .. "/" then return false end -- a link out of dir
    local st = stat(real)
    if st and st.type == "dir" then
      if not index then return false end
      real = real .. "/" .. index
      st = stat(real)
    end
    if not st or st.type ~= "file" then return false end

    local etag = format('W/"%x-%x"', st.size, st.mtime)
    local modified = http_date(st.mtime)
    res:setHeader("Last-Modified", modified)
    res:setHeader("ETag", etag)
    if opts.cacheControl then res:setHeader("Cache-Control", opts.cacheControl) end
    local inm, ims = req.headers["if-none-match"], req.headers["if-modified-since"]
    local fresh
    if inm then
      for tag in gmatch(type(inm) == "table" and concat(inm, ",") or inm, "[^,%s]+") do
        if tag == etag or tag == "*" or "W/" .. tag == etag then fresh = true end
      end
    elseif type(ims) == "string" then
      local t = parse_http_date(ims)
      fresh = t ~= nil and st.mtime <= t
    end
    if fresh then
      res:writeHead(304)
      res:finish()
      return true
    end
    res:setHeader("Content-Type", content_type(real))
    res:setHeader("Content-Length", st.size)
    if method == "HEAD" or st.size == 0 then
      res:finish()
    else
      send_file(res, real, st.size)
    end
    return true
  end
end

setmetatable(_M, { __call = function(_, dir, opts) return _M.new(dir, opts) end })

return _M
