-- bench/shdict/ffi-vs-capi.lua: a moonfork app (one worker): GET /?so=PATH&rounds=N times the same dict
-- operations through lua/moonfork/shared.lua (the FFI) and through a classic lua_CFunction binding
-- (capi.c, built as PATH), one after the other, N rounds; answers the median ns per operation of each
-- and the ratio. Run by bench/shdict/ffi-vs-capi.
local moonfork = require "moonfork"
local ffi = require "ffi"
local shared = require "moonfork.shared"

local function measure(so, ROUNDS)
local out = {}
local capi = assert(package.loadlib(so, "luaopen_shdict_capi"))()
local d = capi.new()

local N = 2000000
local keys, V = {}, string.rep("v", 32)
for i = 1, 1000 do keys[i] = "key:" .. i end
for i = 1, 1000 do capi.set(d, keys[i], V) end

local clock = os.clock
local function time(fn)
  local t0 = clock()
  fn()
  return (clock() - t0) / N * 1e9
end

local ffi_dict = shared._wrap(ffi.cast("shdict_t *", d))
local cases = {
  get = { function() for i = 1, N do ffi_dict:get(keys[i % 1000 + 1]) end end,
          function() local g = capi.get for i = 1, N do g(d, keys[i % 1000 + 1]) end end },
  set = { function() for i = 1, N do ffi_dict:set(keys[i % 1000 + 1], V) end end,
          function() local s = capi.set for i = 1, N do s(d, keys[i % 1000 + 1], V) end end },
  incr = { function() for i = 1, N do ffi_dict:incr("n", 1, 0) end end,
           function() local f = capi.incr for i = 1, N do f(d, "n", 1) end end },
}
local function median(t) table.sort(t) return t[math.ceil(#t / 2)] end
out[#out + 1] = string.format("%-6s %12s %12s %8s", "op", "FFI ns/op", "C API ns/op", "C/FFI")
for _, op in ipairs({ "get", "set", "incr" }) do
  local a, b = {}, {}
  for _ = 1, ROUNDS do
    a[#a + 1] = time(cases[op][1])
    b[#b + 1] = time(cases[op][2])
  end
  local fa, fb = median(a), median(b)
  out[#out + 1] = string.format("%-6s %12.0f %12.0f %7.2fx", op, fa, fb, fb / fa)
end
return table.concat(out, "\n") .. "\n"
end

moonfork.listen({ port = 8080 }, function(req, res)
  if req.path ~= "/" then return res:finish("ready\n") end
  res:finish(measure(req.query.so, tonumber(req.query.rounds) or 5))
end)
