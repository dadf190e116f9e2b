-- moonfork.ngx_codec: base64 as OpenResty's ngx.encode_base64 / ngx.decode_base64 have it, and the
-- digests (md5, sha1, hmac-sha1) from libcrypto, which is loaded at the first digest only.
--
-- Base64 works on numbers, not bits: 3 bytes are a 24-bit number, cut into two 12-bit halves, each
-- of which names a pair of output characters in a 4096-entry table built once. Decoding follows
-- nginx's ngx_decode_base64: it stops at the first "=" (padding is optional, what follows it is
-- ignored), any other byte outside the alphabet, or a length that leaves one lone character, makes
-- the input invalid (nil).
local type, tostring, error, pcall, floor = type, tostring, error, pcall, math.floor
local byte, char, sub, find, gsub, format = string.byte, string.char, string.sub, string.find, string.gsub,
  string.format
local concat = table.concat

local _M = {}

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local digit, pair, value = {}, {}, {}
for i = 0, 63 do
  digit[i] = sub(ALPHABET, i + 1, i + 1)
  value[byte(ALPHABET, i + 1)] = i
end
for i = 0, 4095 do pair[i] = digit[floor(i / 64)] .. digit[i % 64] end

-- encode_base64(s[, no_padding]): nil (and false) encode as "", other values through tostring.
function _M.encode(s, no_padding)
  if type(s) ~= "string" then s = s and tostring(s) or "" end
  if no_padding ~= nil and type(no_padding) ~= "boolean" then
    error("bad argument #2 to 'encode_base64' (boolean expected, got " .. type(no_padding) .. ")", 2)
  end
  local n = #s
  local full = n - n % 3
  local out, k = {}, 0
  for i = 1, full, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = a * 65536 + b * 256 + c
    out[k + 1], out[k + 2] = pair[floor(v / 4096)], pair[v % 4096]
    k = k + 2
  end
  local pad = no_padding and "" or nil
  if n - full == 1 then
    out[k + 1] = pair[byte(s, n) * 16] .. (pad or "==")
  elseif n - full == 2 then
    local a, b = byte(s, n - 1, n)
    local v = a * 1024 + b * 4
    out[k + 1] = pair[floor(v / 64)] .. digit[v % 64] .. (pad or "=")
  end
  return concat(out)
end

local function decode_prefix(s, len)
  local out, k = {}, 0
  local full = len - len % 4
  for i = 1, full, 4 do
    local a, b, c, d = byte(s, i, i + 3)
    local v = value[a] * 262144 + value[b] * 4096 + value[c] * 64 + value[d]
    k = k + 1
    out[k] = char(floor(v / 65536), floor(v / 256) % 256, v % 256)
  end
  local rest = len - full
  if rest == 2 then
    local a, b = byte(s, full + 1, full + 2)
    out[k + 1] = char(value[a] * 4 + floor(value[b] / 16))
  elseif rest == 3 then
    local a, b, c = byte(s, full + 1, full + 3)
    local v = value[a] * 1024 + value[b] * 16 + floor(value[c] / 4)
    out[k + 1] = char(floor(v / 256), v % 256)
  end
  return concat(out)
end

-- decode_base64(s) -> the bytes, or nil when s is not base64.
function _M.decode(s)
  if type(s) ~= "string" then error("bad argument #1 to 'decode_base64' (string expected, got " .. type(s) .. ")", 2) end
  local stop = find(s, "=", 1, true)
  local len = stop and stop - 1 or #s
  local bad = find(s, "[^A-Za-z0-9+/]")
  if (bad and bad <= len) or len % 4 == 1 then return nil end
  return decode_prefix(s, len)
end

-- decode_base64mime(s): as decode, after dropping every byte outside the alphabet (line breaks).
function _M.decode_mime(s)
  if type(s) ~= "string" then
    error("bad argument #1 to 'decode_base64mime' (string expected, got " .. type(s) .. ")", 2)
  end
  return _M.decode((gsub(s, "[^A-Za-z0-9+/=]", "")))
end

---------------------------------------------------------------------------------------------------
-- digests: libcrypto through the FFI, declared under names of our own (__asm__ points them at
-- OpenSSL's symbols) so a script's own ffi.cdef of MD5 or HMAC cannot clash with ours

local ffi, crypto, md, mdlen

local function load_crypto()
  ffi = require "ffi"
  pcall(ffi.cdef, [[
    unsigned char *moonfork_ngx_md5(const char *d, size_t n, unsigned char *md) __asm__("MD5");
    unsigned char *moonfork_ngx_sha1(const char *d, size_t n, unsigned char *md) __asm__("SHA1");
    const void *moonfork_ngx_evp_sha1(void) __asm__("EVP_sha1");
    unsigned char *moonfork_ngx_hmac(const void *evp_md, const char *key, int key_len, const char *d,
                                     size_t n, unsigned char *md, unsigned int *md_len) __asm__("HMAC");
  ]])
  local ok, lib = pcall(ffi.load, "libcrypto.so.3")
  if not ok then error("libcrypto.so.3 cannot be loaded (install the Debian package libssl3): " .. tostring(lib), 3) end
  crypto, md, mdlen = lib, ffi.new("unsigned char[64]"), ffi.new("unsigned int[1]")
end

local function arg_string(s)
  if type(s) == "string" then return s end
  return s and tostring(s) or ""
end

function _M.md5_bin(s)
  if not crypto then load_crypto() end
  s = arg_string(s)
  crypto.moonfork_ngx_md5(s, #s, md)
  return ffi.string(md, 16)
end

local function hex(c) return format("%02x", byte(c)) end

function _M.md5(s)
  return (gsub(_M.md5_bin(s), ".", hex))
end

function _M.sha1_bin(s)
  if not crypto then load_crypto() end
  s = arg_string(s)
  crypto.moonfork_ngx_sha1(s, #s, md)
  return ffi.string(md, 20)
end

function _M.hmac_sha1(key, s)
  if not crypto then load_crypto() end
  key, s = arg_string(key), arg_string(s)
  if crypto.moonfork_ngx_hmac(crypto.moonfork_ngx_evp_sha1(), key, #key, s, #s, md, mdlen) == nil then
    error("ngx.hmac_sha1: HMAC failed", 2)
  end
  return ffi.string(md, mdlen[0])
end

return _M
