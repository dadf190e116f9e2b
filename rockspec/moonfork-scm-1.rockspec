-- rockspec/moonfork-scm-1.rockspec: build and install moonfork with LuaRocks, from a checkout:
--   luarocks --lua-version=5.1 make rockspec/moonfork-scm-1.rockspec               (system tree, as root)
--   luarocks --lua-version=5.1 make --tree ~/.luarocks rockspec/moonfork-scm-1.rockspec
-- CMake does the work: it installs bin/moonfork and share/moonfork/lua/ under the rock's own
-- directory, and the binary has that lua directory compiled in (MOONFORK_LUA_DIR_DEFAULT);
-- LuaRocks then copies bin/moonfork into the tree's bin/.
rockspec_format = "3.0"
package = "moonfork"
version = "scm-1"

source = {
  url = "git+file://.",   -- used only by `luarocks build`; `luarocks make` builds the checkout
}

description = {
  summary = "A Lua-scriptable multi-process HTTP application server",
  detailed = [[
moonfork runs an HTTP server written in Lua on a pre-forked pool of worker processes:
a C core on libuv and llhttp, request handlers in LuaJIT coroutines, a master that
supervises, respawns and drains workers.]],
  license = "MIT",
  labels = { "http", "server", "luajit", "libuv" },
}

dependencies = {}   -- the binary embeds LuaJIT; no Lua of LuaRocks' own is needed at run time

external_dependencies = {
  LIBUV = { header = "uv.h", library = "uv" },                       -- libuv1-dev
  LUAJIT = { header = "luajit-2.1/luajit.h", library = "luajit-5.1" }, -- libluajit-5.1-dev
  LIBPQ = { header = "postgresql/libpq-fe.h", library = "pq" },        -- libpq-dev (moonfork.pg)
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },    -- libhiredis-dev (moonfork.redis)
  ZLIB = { header = "zlib.h" },                                       -- zlib1g-dev (WebSocket compression; dlopened)
}

build = {
  type = "cmake",
  variables = {
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    CMAKE_BUILD_TYPE = "Release",
  },
  -- `cmake --install` puts bin/moonfork and share/moonfork/lua/ into $(PREFIX), the rock's
  -- directory; LuaRocks deploys the rock's bin/ into the tree's bin/.
}
