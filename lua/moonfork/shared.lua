-- moonfork.shared: the shared dicts listen({ shared = { name = "10m" } }) declared, by name.
-- moonfork.shared.sessions:get("sid:42"): the names, arguments and returns of OpenResty's
-- ngx.shared.DICT. Every call goes straight to the C store (server/shdict.c) through the LuaJIT FFI,
-- as lua-resty-core does: no Lua/C stack crossing, no userdata; strings come back through one buffer
-- per worker that grows when a value does not fit.
local ffi = require "ffi"

local C, ffi_new, ffi_str, ffi_cast = ffi.C, ffi.new, ffi.string, ffi.cast
local type, tostring, tonumber, error, setmetatable, floor = type, tostring, tonumber, error, setmetatable, math.floor

ffi.cdef [[
typedef struct shdict_s shdict_t;
typedef struct { int32_t type; uint32_t flags; int32_t stale; int32_t forcible; double num; uint64_t len; } shdict_val_t;
shdict_t *shdict_region_find(const char *name);
int shdict_get(shdict_t *d, const char *key, size_t klen, int stale, shdict_val_t *v, char *buf, size_t buflen);
int shdict_store(shdict_t *d, int op, const char *key, size_t klen, const shdict_val_t *v, const char *str,
                 int64_t exptime_ms, int *forcible);
int shdict_incr(shdict_t *d, const char *key, size_t klen, double by, int has_init, double init,
                int64_t init_ttl_ms, double *out, int *forcible);
int shdict_push(shdict_t *d, const char *key, size_t klen, int left, const shdict_val_t *v, const char *str, int64_t *len);
int shdict_pop(shdict_t *d, const char *key, size_t klen, int left, shdict_val_t *v, char *buf, size_t buflen);
int shdict_llen(shdict_t *d, const char *key, size_t klen, int64_t *len);
int shdict_ttl(shdict_t *d, const char *key, size_t klen, int64_t *ms);
int shdict_expire(shdict_t *d, const char *key, size_t klen, int64_t ms);
int shdict_flush_all(shdict_t *d);
int shdict_flush_expired(shdict_t *d, int max);
int shdict_keys(shdict_t *d, uint32_t *cursor, int max, char *buf, size_t buflen, size_t *used);
uint32_t shdict_buckets(const shdict_t *d);
uint64_t shdict_capacity(const shdict_t *d);
uint64_t shdict_free_space(const shdict_t *d);
const char *shdict_strerror(int r);
]]

-- mirrors server/shdict.h
local TNIL, TBOOLEAN, TNUMBER, TSTRING = 0, 1, 3, 4
local ENOTFOUND, ELIST, EBUF = -3, -5, -8
local SET, SAFE_SET, ADD, SAFE_ADD, REPLACE = 0, 1, 2, 3, 4
local KEY_MAX = 65535

local val = ffi_new("shdict_val_t[1]")
local forcible = ffi_new("int[1]")
local num_out = ffi_new("double[1]")
local int_out = ffi_new("int64_t[1]")
local buf_size = 4096
local buf = ffi_new("char[?]", buf_size)

local function grow(n)
  while buf_size < n do buf_size = buf_size * 2 end
  buf = ffi_new("char[?]", buf_size)
end

local function errmsg(r) return ffi_str(C.shdict_strerror(r)) end

-- The dict's pointer and the key as the C side wants it, or nil and OpenResty's message.
local function check(self, key)
  if type(self) ~= "table" or self.d == nil then error("bad \"dict\" argument (use dict:method(...))", 3) end
  if key == nil then return nil, "nil key" end
  if type(key) ~= "string" then key = tostring(key) end
  local n = #key
  if n == 0 then return nil, "empty key" end
  if n > KEY_MAX then return nil, "key too long" end
  return key
end

local MAX_MS = 2 ^ 52 -- about 142,000 years: "never" in practice, and exact in a double

local function ms_of(exptime, what)
  if exptime == nil or exptime == 0 then return 0 end
  if type(exptime) ~= "number" or not (exptime > 0) then error('bad "' .. what .. '" argument', 3) end
  local ms = floor(exptime * 1000 + 0.5)
  if ms > MAX_MS then return MAX_MS end
  return ms > 0 and ms or 1
end

-- Puts a Lua value in `val`; returns the string to pass (or nil), or false when the type is bad.
local function put(value, flags)
  local v = val[0]
  v.flags = flags or 0
  local t = type(value)
  if t == "string" then
    v.type, v.len = TSTRING, #value
    return value
  elseif t == "number" then
    v.type, v.num = TNUMBER, value
  elseif t == "boolean" then
    v.type, v.num = TBOOLEAN, value and 1 or 0
  elseif value == nil then
    v.type = TNIL
  else
    return false
  end
  return nil
end

-- The Lua value `val` holds (a string from buf).
local function take()
  local v = val[0]
  local t = v.type
  if t == TSTRING then return ffi_str(buf, v.len) end
  if t == TNUMBER then return tonumber(v.num) end
  return v.num ~= 0
end

local dict = {}
local mt = { __index = dict }

local function get(self, key, stale)
  local k, err = check(self, key)
  if not k then return nil, err end
  local r = C.shdict_get(self.d, k, #k, stale, val, buf, buf_size)
  while r == EBUF do
    grow(tonumber(val[0].len))
    r = C.shdict_get(self.d, k, #k, stale, val, buf, buf_size)
  end
  if r ~= 0 then
    if r == ENOTFOUND then return nil end
    return nil, errmsg(r)
  end
  local flags = val[0].flags
  return take(), flags ~= 0 and tonumber(flags) or nil, val[0].stale ~= 0
end

function dict.get(self, key)
  local v, flags = get(self, key, 0)
  return v, flags
end

function dict.get_stale(self, key)
  local v, flags, stale = get(self, key, 1)
  if v == nil then return nil, flags end
  return v, flags, stale
end

local function store(self, op, key, value, exptime, flags)
  local k, err = check(self, key)
  if not k then return nil, err end
  if flags ~= nil and type(flags) ~= "number" then error('bad "flags" argument', 3) end
  local ms = ms_of(exptime, "exptime")
  local s = put(value, flags)
  if s == false then return nil, "bad value type" end
  local r = C.shdict_store(self.d, op, k, #k, val, s, ms, forcible)
  if r ~= 0 then return false, errmsg(r), forcible[0] ~= 0 end
  return true, nil, forcible[0] ~= 0
end

function dict.set(self, key, value, exptime, flags) return store(self, SET, key, value, exptime, flags) end
function dict.safe_set(self, key, value, exptime, flags)
  local ok, err = store(self, SAFE_SET, key, value, exptime, flags)
  return ok, err
end
function dict.add(self, key, value, exptime, flags) return store(self, ADD, key, value, exptime, flags) end
function dict.safe_add(self, key, value, exptime, flags)
  local ok, err = store(self, SAFE_ADD, key, value, exptime, flags)
  return ok, err
end
function dict.replace(self, key, value, exptime, flags) return store(self, REPLACE, key, value, exptime, flags) end
function dict.delete(self, key) return store(self, SET, key, nil) end

function dict.incr(self, key, value, init, init_ttl)
  local k, err = check(self, key)
  if not k then return nil, err end
  value = tonumber(value)
  if value == nil then error("cannot convert 'value' to a number", 2) end
  local has_init = 0
  if init ~= nil then
    init = tonumber(init)
    if init == nil then error("cannot convert 'init' to a number", 2) end
    has_init = 1
  elseif init_ttl ~= nil then
    error('bad "init_ttl" argument: it needs "init"', 2)
  end
  local r = C.shdict_incr(self.d, k, #k, value, has_init, init or 0, ms_of(init_ttl, "init_ttl"), num_out, forcible)
  if r ~= 0 then return nil, errmsg(r) end
  return tonumber(num_out[0]), nil, forcible[0] ~= 0
end

local function push(self, key, value, left)
  local k, err = check(self, key)
  if not k then return nil, err end
  local s = put(value)
  if s == false or val[0].type == TNIL then return nil, "bad value type" end
  local r = C.shdict_push(self.d, k, #k, left, val, s, int_out)
  if r ~= 0 then return nil, errmsg(r) end
  return tonumber(int_out[0])
end
function dict.lpush(self, key, value) return push(self, key, value, 1) end
function dict.rpush(self, key, value) return push(self, key, value, 0) end

local function pop(self, key, left)
  local k, err = check(self, key)
  if not k then return nil, err end
  local r = C.shdict_pop(self.d, k, #k, left, val, buf, buf_size)
  while r == EBUF do
    grow(tonumber(val[0].len))
    r = C.shdict_pop(self.d, k, #k, left, val, buf, buf_size)
  end
  if r == ENOTFOUND then return nil end
  if r ~= 0 then return nil, errmsg(r) end
  return take()
end
function dict.lpop(self, key) return pop(self, key, 1) end
function dict.rpop(self, key) return pop(self, key, 0) end

function dict.llen(self, key)
  local k, err = check(self, key)
  if not k then return nil, err end
  local r = C.shdict_llen(self.d, k, #k, int_out)
  if r ~= 0 then return nil, errmsg(r) end
  return tonumber(int_out[0])
end

function dict.ttl(self, key)
  local k, err = check(self, key)
  if not k then return nil, err end
  local r = C.shdict_ttl(self.d, k, #k, int_out)
  if r ~= 0 then return nil, errmsg(r) end
  return tonumber(int_out[0]) / 1000
end

function dict.expire(self, key, exptime)
  local k, err = check(self, key)
  if not k then return nil, err end
  if exptime == nil then error('bad "exptime" argument', 2) end
  local r = C.shdict_expire(self.d, k, #k, ms_of(exptime, "exptime"))
  if r ~= 0 then return nil, errmsg(r) end
  return true
end

function dict.flush_all(self)
  check(self, "")
  C.shdict_flush_all(self.d)
end

function dict.flush_expired(self, max)
  check(self, "")
  return tonumber(C.shdict_flush_expired(self.d, tonumber(max) or 0))
end

local cursor, used = ffi_new("uint32_t[1]"), ffi_new("size_t[1]")
local u32p = ffi.typeof("uint32_t *")

-- get_keys([max]): up to max keys (default 1024, 0 = all), read a batch of buckets at a time.
function dict.get_keys(self, max)
  check(self, "")
  max = max == nil and 1024 or tonumber(max)
  if max == nil or max < 0 then error('bad "max" argument', 2) end
  local keys, n, nb = {}, 0, C.shdict_buckets(self.d)
  cursor[0] = 0
  while cursor[0] < nb and (max == 0 or n < max) do
    local r = C.shdict_keys(self.d, cursor, max == 0 and 0 or max - n, buf, buf_size, used)
    if r == EBUF then
      grow(tonumber(used[0]))
    elseif r < 0 then
      return nil, errmsg(r)
    else
      local off = 0
      for _ = 1, r do
        local len = ffi_cast(u32p, buf + off)[0]
        if max == 0 or n < max then n = n + 1; keys[n] = ffi_str(buf + off + 4, len) end
        off = off + 4 + len
      end
    end
  end
  return keys
end

function dict.capacity(self) check(self, ""); return tonumber(C.shdict_capacity(self.d)) end
function dict.free_space(self) check(self, ""); return tonumber(C.shdict_free_space(self.d)) end

-- moonfork.shared.<name>: the dict, or nil when listen() declared none of that name.
local _M = { _VERSION = "0.1" }

-- A dict object for a shdict_t pointer (bench/shdict/ffi-vs-capi).
function _M._wrap(p) return setmetatable({ d = p, name = "?" }, mt) end
local dicts = {}
return setmetatable(_M, { __index = function(_, name)
  if type(name) ~= "string" then return nil end
  local d = dicts[name]
  if d then return d end
  local p = C.shdict_region_find(name)
  if p == nil then return nil end
  d = setmetatable({ d = p, name = name }, mt)
  dicts[name] = d
  return d
end })
