-- moonfork.http_client: moonfork.http.request(url[, opts]), an HTTP/1.1 client over the cosocket.
--
-- Connections are moonfork.socket's: its pools (one per origin), timeouts, TLS and the rule that a
-- connection a callback leaves open is closed when that callback returns. Responses are parsed in C
-- (server/bind_httpc.c over llhttp in response mode): each read from the socket is one call, which
-- answers with that read's body bytes as one string, so no Lua runs per byte, line or chunk. A whole
-- body is joined in C and comes back as one string; a streamed one is handed out read by read.
--
-- A connection goes back to its pool only after a response that was framed (Content-Length or
-- chunked), read to its end, with nothing after it and keep-alive on both sides; anything else (a
-- close-delimited body, an error, a body past maxBody, a response abandoned) closes it.
local socket = require "moonfork.socket"
local sched = require "moonfork.sched"
local chttpc = package.loaded["moonfork.core.httpc"] or {}

local type, tostring, tonumber, pairs, ipairs, setmetatable, error, pcall =
  type, tostring, tonumber, pairs, ipairs, setmetatable, error, pcall
local find, sub, lower, match, format, gsub, char = string.find, string.sub, string.lower, string.match,
  string.format, string.gsub, string.char
local remove, min, concat = table.remove, math.min, table.concat
local spawn = sched.spawn
local new_parser, pstart, pfeed, pfinish, phead, ptrailers =
  chttpc.parser, chttpc.start, chttpc.feed, chttpc.finish, chttpc.head, chttpc.trailers

local _M = { _VERSION = "0.1" }

local MAX_REDIRECTS = 10
local MAX_MS = 2 ^ 31
local DEFAULT_MAX_BODY = 10 * 1024 * 1024
local READ_MAX = 1024 * 1024   -- bytes taken from the socket's buffer per read
local CONTINUE_WAIT = 1000     -- ms to wait for "100 Continue" before sending the body anyway
local MAX_INTERIM = 16         -- 1xx responses before the final one
local RETRIES = 3              -- fresh attempts after a pooled connection the peer had closed
local SPARE_MAX = 16           -- parsers kept for reuse (each keeps at most 80 KiB of buffers)
local INLINE_BODY = 64 * 1024  -- a string body up to this size goes out with the head, before reading

---------------------------------------------------------------------------------------------------
-- urls

local function hexchar(h) return char(tonumber(h, 16)) end

-- { scheme, host, port, path, unix, tls, authority } of an absolute URL, or nil, err.
local function parse_url(url)
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "bad url (not scheme://host/path): " .. url end
  scheme = lower(scheme)
  local authority, path = match(rest, "^([^/?#]*)(.*)$")
  path = gsub(path, "#.*$", "")
  if path == "" or sub(path, 1, 1) == "?" then path = "/" .. path end
  if find(path, "[%c ]") then return nil, "bad url (a space or control character in the path): " .. url end
  local u = { scheme = scheme, path = path, authority = authority }
  if scheme == "http+unix" then
    u.unix, u.host, u.authority = gsub(authority, "%%(%x%x)", hexchar), "localhost", "localhost"
    if u.unix == "" then return nil, "bad url (no socket path): " .. url end
    return u
  end
  if scheme ~= "http" and scheme ~= "https" then return nil, "unsupported scheme " .. scheme .. ": " .. url end
  u.tls = scheme == "https"
  local host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$") -- an IPv6 literal
  if not host then host, port = match(authority, "^([%w.%-_~%%!$&'()*+,;=]+):?(%d*)$") end
  if not host then return nil, "bad url (host): " .. url end
  u.host, u.port = lower(host), tonumber(port) or (u.tls and 443 or 80)
  if u.port < 1 or u.port > 65535 then return nil, "bad url (port): " .. url end
  return u
end

-- parse_url, remembered twice over: whole URLs (a worker calls the same few again and again), and
-- origins ("scheme://authority": a proxy calls a few upstreams with ever other paths), so a URL not
-- seen before on a known origin costs its path's checks only. The parts are only read, never
-- changed, but for the connect options connect_opts keeps with the origin. Each cache starts over
-- past CACHE_MAX names.
local url_cache, url_cached = {}, 0
local origin_cache, origins_cached = {}, 0
local CACHE_MAX = 256

local function path_of(rest, url)
  local path = rest
  if find(path, "#", 1, true) then path = gsub(path, "#.*$", "") end
  if path == "" or sub(path, 1, 1) == "?" then path = "/" .. path end
  if find(path, "[%c ]") then return nil, "bad url (a space or control character in the path): " .. url end
  return path
end

local function parse_url_cached(url)
  local u = url_cache[url]
  if u then return u end
  local base, rest = match(url, "^(%a[%w+.-]*://[^/?#]*)(.*)$")
  local o = base and origin_cache[base]
  if o then
    local path, err = path_of(rest, url)
    if not path then return nil, err end
    u = { scheme = o.scheme, host = o.host, port = o.port, unix = o.unix, tls = o.tls, authority = o.authority,
          path = path, origin = o }
  else
    local err
    u, err = parse_url(url)
    if not u then return nil, err end
    o = { scheme = u.scheme, host = u.host, port = u.port, unix = u.unix, tls = u.tls, authority = u.authority }
    u.origin = o
    if origins_cached >= CACHE_MAX then origin_cache, origins_cached = {}, 0 end
    origin_cache[base], origins_cached = o, origins_cached + 1
  end
  if url_cached >= CACHE_MAX then url_cache, url_cached = {}, 0 end
  url_cache[url], url_cached = u, url_cached + 1
  return u
end

-- The URL a Location value names, relative to `base` (RFC 3986 §5.2, the common cases).
local function resolve(u, loc)
  if match(loc, "^%a[%w+.-]*://") then return loc end
  local origin = u.scheme .. "://" .. u.authority
  if sub(loc, 1, 2) == "//" then return u.scheme .. ":" .. loc end
  if sub(loc, 1, 1) == "/" then return origin .. loc end
  local dir = match(u.path, "^([^?]*/)") or "/"
  if sub(loc, 1, 1) == "?" then return origin .. match(u.path, "^[^?]*") .. loc end
  return origin .. dir .. loc
end

---------------------------------------------------------------------------------------------------
-- options

local function check_ms(v, name)
  if v ~= nil and (type(v) ~= "number" or not (v >= 0 and v <= MAX_MS)) then -- (NaN fails too)
    error("moonfork.http.request(): opts." .. name .. " must be a number of milliseconds from 0 to 2^31", 4)
  end
  return v
end

local function bad_field(s) return find(type(s) == "string" and s or tostring(s), "[\r\n%z]") ~= nil end

-- Header names found to be tokens -> their lower-case form: a worker sends the same few names again
-- and again. (Starts over past TOKENS_MAX names.)
local tokens, ntokens = {}, 0
local TOKENS_MAX = 512

local function is_token(name)
  if tokens[name] then return true end
  if type(name) ~= "string" or not match(name, "^[%w!#$%%&'*+.^_`|~-]+$") then return false end
  if ntokens >= TOKENS_MAX then tokens, ntokens = {}, 0 end
  tokens[name], ntokens = lower(name), ntokens + 1 -- (its lower-case form, for build_head)
  return true
end

-- Raises (at the caller of request) for a header name that is not a token, or a value that would
-- end its line (CR, LF) or a string (NUL): nothing of such a request is sent.
local function check_headers(h)
  if h == nil then return end
  if type(h) ~= "table" then error("moonfork.http.request(): opts.headers must be a table", 4) end
  for name, v in pairs(h) do
    if not is_token(name) then
      error("moonfork.http.request(): bad header name " .. tostring(name), 4)
    end
    if type(v) == "table" then
      for i = 1, #v do
        if bad_field(v[i]) then error("moonfork.http.request(): header " .. name .. " has a CR, LF or NUL", 4) end
      end
    elseif bad_field(v) then
      error("moonfork.http.request(): header " .. name .. " has a CR, LF or NUL", 4)
    end
  end
end

local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, DELETE = true, PATCH = true, OPTIONS = true }

-- The request's settings, from opts (raises on misuse).
local function options(opts)
  if opts ~= nil and type(opts) ~= "table" then error("moonfork.http.request(url, opts): opts must be a table", 3) end
  opts = opts or {}
  local o = { method = opts.method or "GET", headers = opts.headers, body = opts.body, stream = opts.stream,
              keepalive = opts.keepalive ~= false, pool = opts.pool, pool_size = opts.poolSize,
              idle = check_ms(opts.idle, "idle"), verify = opts.verify ~= false }
  if not METHODS[o.method] and (type(o.method) ~= "string" or not match(o.method, "^[%w!#$%%&'*+.^_`|~-]+$")) then
    error("moonfork.http.request(): opts.method must be a method name", 3)
  end
  check_headers(o.headers)
  local bt = type(o.body)
  if o.body ~= nil and bt ~= "string" and bt ~= "function" then
    error("moonfork.http.request(): opts.body must be a string or a function", 3)
  end
  local t = check_ms(opts.timeout, "timeout")
  o.ct = check_ms(opts.connectTimeout, "connectTimeout") or t
  o.st = check_ms(opts.sendTimeout, "sendTimeout") or t
  o.rt = check_ms(opts.readTimeout, "readTimeout") or t
  local r = opts.redirects or 0
  if type(r) ~= "number" or not (r >= 0 and r <= MAX_REDIRECTS) or r % 1 ~= 0 then
    error("moonfork.http.request(): opts.redirects must be a number from 0 to " .. MAX_REDIRECTS, 3)
  end
  o.redirects = r
  local mb = opts.maxBody
  if mb ~= nil and (type(mb) ~= "number" or not (mb >= 0)) then error("moonfork.http.request(): opts.maxBody must be a number of bytes", 3) end
  o.max_body = mb or (not o.stream and DEFAULT_MAX_BODY or nil)
  return o
end

---------------------------------------------------------------------------------------------------
-- the request


-- Adds "name: value" lines for one header (a string, or a list for a repeated one) to t.
-- (check_headers has checked them)
local function add_header(t, n, name, v)
  if type(v) ~= "table" then
    t[n + 1], t[n + 2], t[n + 3], t[n + 4] = name, ": ", tostring(v), "\r\n"
    return n + 4
  end
  for _, one in ipairs(v) do
    t[n + 1], t[n + 2], t[n + 3], t[n + 4] = name, ": ", tostring(one), "\r\n"
    n = n + 4
  end
  return n
end

-- The request head as a list of strings; and whether the body goes chunked, and whether the caller
-- asked for "Expect: 100-continue".
-- The headers build_head must know the caller gave (by lower-case name).
local GIVEN = { host = 1, ["content-length"] = 2, ["transfer-encoding"] = 3, connection = 4, expect = 5 }
local head_t, head_n = {}, 0 -- build_head's scratch list (it never waits, so one serves every request)

local function build_head(o, u)
  local t = head_t
  t[1], t[2], t[3], t[4] = o.method, " ", u.path, " HTTP/1.1\r\n"
  local n, expect = 4, false
  local host, cl, te, conn
  if o.headers then
    for name, v in pairs(o.headers) do
      n = add_header(t, n, name, v)
      local g = GIVEN[tokens[name] or lower(name)]
      if g then
        if g == 1 then host = true elseif g == 2 then cl = true elseif g == 3 then te = true
        elseif g == 4 then conn = true
        elseif lower(tostring(v)) == "100-continue" then expect = true end
      end
    end
  end
  if not host then n = add_header(t, n, "Host", u.authority) end
  local body, chunked = o.body, false
  if body ~= nil and not cl and not te then
    if type(body) == "string" then
      n = add_header(t, n, "Content-Length", #body)
    else
      n = add_header(t, n, "Transfer-Encoding", "chunked")
      chunked = true
    end
  elseif type(body) == "function" and te and not cl then
    chunked = true
  end
  if not o.keepalive and not conn then n = add_header(t, n, "Connection", "close") end
  n = n + 1
  t[n] = "\r\n"
  local head = concat(t, "", 1, n)
  for i = n + 1, head_n do t[i] = nil end -- (what a longer head left: not kept alive)
  head_n = n
  return head, chunked, expect and body ~= nil
end

-- Sends the pieces of a function body (chunk-framed when chunked), then the last chunk. A function
-- that returns nil, err aborts the request: the body is not ended, the connection will be closed.
local function send_pieces(sock, body, chunked)
  while true do
    local piece, perr = body()
    if piece == nil then
      if perr ~= nil then return nil, tostring(perr) end
      break
    end
    if type(piece) ~= "string" then error("moonfork.http.request(): opts.body returned a " .. type(piece), 0) end
    if #piece > 0 then
      local ok, err = sock:send(chunked and { format("%x\r\n", #piece), piece, "\r\n" } or piece)
      if not ok then return nil, err end
    end
  end
  if chunked then return sock:send("0\r\n\r\n") end
  return true
end

local function send_body(sock, o, chunked)
  if type(o.body) == "string" then return sock:send(o.body) end
  return send_pieces(sock, o.body, chunked)
end

---------------------------------------------------------------------------------------------------
-- reading: st = { sock, p, headed, done, piece, rest, upgrade, got }

local spare = {}

local function parser_get()
  return remove(spare) or new_parser()
end

-- One read (or what was left after an interim response) fed to the parser: true, or nil, err.
local function step(st)
  local data = st.rest
  if data then
    st.rest = nil
  else
    local err
    data, err = st.sock:receiveany(READ_MAX)
    if not data then
      if err == "closed" and st.headed then -- a body without a length ends here
        local state, body = pfinish(st.p)
        if state then
          st.done, st.piece, st.rest = true, body, "" -- (not reusable: closed)
          return true
        end
      end
      return nil, err
    end
  end
  st.got = true
  local state, body, headed, used = pfeed(st.p, data)
  if not state then return nil, body end
  st.headed, st.piece = headed, body
  if state ~= 0 then
    st.done = true
    if used < #data then st.rest = sub(data, used + 1) end
    if state == 2 then st.upgrade = true end
  end
  return true
end

-- The connection after a complete response: back to the pool when nothing speaks against it.
local function release(st, o)
  local sock, p = st.sock, st.p
  st.sock, st.p = nil, nil
  if st.keep and not st.rest and not st.upgrade and o.keepalive then
    sock:setkeepalive(o.idle, o.pool_size)
  else
    sock:close()
  end
  if p and #spare < SPARE_MAX then
    pstart(p, false, nil, false) -- gives back what its buffers grew past their keep size
    spare[#spare + 1] = p
  end
end

local function abandon(st)
  local sock = st.sock
  st.sock, st.p = nil, nil
  if sock then sock:close() end
end

-- Reads until a final response's head: status, reason, headers, or "continue" (a 100 the caller
-- waits for), or nil, err.
local function read_head(st, o, want_continue)
  while true do
    local ok, err = step(st)
    if not ok then return nil, err end
    if st.headed then
      local status, reason, headers, keep = phead(st.p)
      if status >= 200 or status == 101 or status < 100 then
        st.keep, st.te = keep, headers["transfer-encoding"] ~= nil
        return status, reason, headers
      end
      local rest = st.rest -- an interim response: the final one follows
      st.interim = (st.interim or 0) + 1
      if st.interim > MAX_INTERIM then return nil, "malformed response: more than " .. MAX_INTERIM .. " 1xx responses" end
      st.done, st.headed, st.rest = false, false, nil
      pstart(st.p, st.no_body, o.max_body, st.whole)
      st.rest = rest
      if status == 100 and want_continue then return "continue" end
    end
  end
end

-- What a read that failed reports when the request's body failed meanwhile (sent behind, see
-- send_behind): an error the body function raised is raised again, its nil, err gives err.
local function body_failure(st, err)
  local raised = st.raised
  if raised ~= nil then
    st.raised = nil
    error(raised, 0)
  end
  return st.send_err or err
end

---------------------------------------------------------------------------------------------------
-- the response

local Response = {}
Response.__index = Response

-- res:read() -> the next piece of a streamed body, nil at its end (or after close), or nil, err.
function Response:read()
  local st = self._st
  if not st then
    local last = self._last -- (the body that came whole with the head)
    self._last = nil
    return last
  end
  while true do
    local piece = st.piece
    if piece then
      st.piece = nil
      if st.done then self:_finish() end
      return piece
    end
    if st.done then
      self:_finish()
      return nil
    end
    local ok, err = step(st)
    if not ok then
      self._st = nil
      abandon(st)
      return nil, body_failure(st, err)
    end
  end
end

function Response:_finish()
  local st = self._st
  self._st = nil
  if st.te then -- (only a chunked body has trailers)
    local tr = ptrailers(st.p)
    if tr then self.trailers = tr end
  end
  release(st, self._o)
end

-- res:close(): the rest of a streamed body is not wanted; the connection is closed.
function Response:close()
  local st = self._st
  self._st, self._last = nil, nil
  if st then abandon(st) end
end

-- Reads a whole body (it is joined in C): true, or nil, err.
local function read_whole(res, st)
  while not st.done do
    local ok, err = step(st)
    if not ok then
      abandon(st)
      return nil, body_failure(st, err)
    end
  end
  res.body = st.piece or ""
  st.piece = nil
  res._st = st
  res:_finish()
  return true
end

---------------------------------------------------------------------------------------------------
-- one exchange

-- The options for sock:connect: the pool's name (the origin, or opts.pool) and size. Those of the
-- default pool are kept with the parsed origin (cached), so a request to a known origin builds none.
local function connect_opts(u, o)
  local verified, home = not u.tls or o.verify, u.origin or u
  if o.pool == nil then
    local c = verified and home.copts or home.copts_nv
    if c and c.pool_size == o.pool_size then return c end
  end
  local name = o.pool or (u.unix and "unix:" .. u.unix) or (u.scheme .. "://" .. u.host .. ":" .. u.port)
  if not verified then name = name .. " (not verified)" end
  local c = { pool = name, pool_size = o.pool_size }
  if o.pool == nil then
    if verified then home.copts = c else home.copts_nv = c end
  end
  return c
end

local function connect(u, o)
  local sock = socket.tcp()
  sock:settimeouts(o.ct, o.st, o.rt)
  local copts = connect_opts(u, o)
  local ok, err
  if u.unix then
    ok, err = sock:connect("unix:" .. u.unix, copts)
  else
    ok, err = sock:connect(u.host, u.port, copts)
  end
  if ok and u.tls then ok, err = sock:sslhandshake(nil, u.host, o.verify) end
  if not ok then return nil, err end
  return sock
end

-- The body, sent from a coroutine of its own while the caller's reads the response: a server may
-- answer (or fail) before it has the whole body. A failure closes the socket, so a reader still
-- waiting hears "closed" and reports the body's failure instead (body_failure): exchange before the
-- response is handed out, res:read() after.
local function send_behind(st, o, sock) -- (st.chunked: whether the body goes chunk-framed)
  local ok, sent, err = pcall(send_body, sock, o, st.chunked)
  st.sending = false
  if ok and sent then return end
  if ok then st.send_err = err else st.raised = sent end
  sock:close()
end

-- Sends the request on st.sock and reads the final response's head: status, reason, headers | nil, err.
local function exchange(st, o, u)
  local head, chunked, expect = build_head(o, u)
  local sock, body, ok, err = st.sock, o.body
  if body == nil or (type(body) == "string" and #body <= INLINE_BODY and not expect) then
    ok, err = sock:send(body and { head, body } or head)
    if not ok then return nil, err end
    return read_head(st, o, false)
  end
  ok, err = sock:send(head)
  if not ok then return nil, err end
  if expect then
    sock:settimeouts(o.ct, o.st, (o.rt or 0) > 0 and min(o.rt, CONTINUE_WAIT) or CONTINUE_WAIT)
    local status, reason, headers = read_head(st, o, true)
    sock:settimeouts(o.ct, o.st, o.rt)
    if status ~= "continue" and (status or reason ~= "timeout") then -- a final answer, or an error
      st.keep = false -- the server did not read the body it answered without
      return status, reason, headers
    end
  end
  st.sending, st.chunked = true, chunked
  spawn(send_behind, nil, st, o, sock)
  local status, reason, headers
  repeat -- (while the body is still going out, a read timeout is not the server's silence)
    status, reason, headers = read_head(st, o, false)
  until status or reason ~= "timeout" or not st.sending
  if not status then return nil, body_failure(st, reason) end
  body_failure(st) -- (raises when the body function did, even though the head had come)
  if st.sending or st.send_err then st.keep = false end -- answered before it had the whole body
  return status, reason, headers
end

-- Methods a request may be sent again with when its connection turned out closed (RFC 9110 §9.2.2):
-- the server may have acted on one that it then failed to answer.
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true, TRACE = true }

-- What a pooled connection the server had closed meanwhile fails with.
local STALE = { closed = true, ["connection reset by peer"] = true, ["broken pipe"] = true }

-- One request on one connection (a fresh one after a pooled one the peer had closed): res | nil, err.
local function once(url, o)
  local u, err = parse_url_cached(url)
  if not u then return nil, err end
  local replayable = type(o.body) ~= "function" and IDEMPOTENT[o.method]
  for _ = 1, RETRIES do
    local sock
    sock, err = connect(u, o)
    if not sock then return nil, err end
    local reused = sock:getreusedtimes() > 0
    local no_body, whole = o.method == "HEAD", not o.stream
    local st = { sock = sock, p = parser_get(), no_body = no_body, whole = whole }
    pstart(st.p, no_body, o.max_body, whole)
    local status, reason, headers = exchange(st, o, u)
    if status then
      return setmetatable({ status = status, reason = reason, headers = headers, _st = st, _o = o, _u = u }, Response)
    end
    abandon(st)
    err = reason
    if not (reused and replayable and not st.got and STALE[err]) then
      break
    end
  end
  return nil, err
end

-- Headers that describe a body (dropped with it: a 303), and those meant for one origin only (dropped
-- on a redirect to another: the credentials, the Host the caller set).
local BODY_HEADERS = { ["content-length"] = true, ["transfer-encoding"] = true, ["content-type"] = true,
                       expect = true }
local ORIGIN_HEADERS = { host = true, authorization = true, cookie = true, ["proxy-authorization"] = true }

local function headers_without(h, drop)
  if not h then return nil end
  local t = {}
  for name, v in pairs(h) do
    if not drop[lower(name)] then t[name] = v end
  end
  return t
end

local function origin(u)
  return u.scheme .. "://" .. (u.unix or u.host) .. ":" .. tostring(u.port)
end

-- Sets o up for the request a redirect asks for; nil, err when it cannot be made.
local function redirect(o, res, url)
  local u = parse_url(url)
  if u and origin(u) ~= origin(res._u) then
    o.headers, o.pool = headers_without(o.headers, ORIGIN_HEADERS), nil
  end
  if res.status == 303 or ((res.status == 301 or res.status == 302) and o.method == "POST") then
    o.method, o.body, o.headers = o.method == "HEAD" and "HEAD" or "GET", nil, headers_without(o.headers, BODY_HEADERS)
  elseif type(o.body) == "function" then
    return nil, "cannot follow a " .. res.status .. " redirect with a body given as a function"
  end
  return true
end

local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- The body of a response that is not handed to the caller (a redirect): read and dropped.
local function drain(res)
  if not res._st then return end
  if not res._o.stream then return end -- (a whole body was read already)
  repeat
    local piece, err = res:read()
    if err then return end
  until piece == nil
end

---------------------------------------------------------------------------------------------------
-- moonfork.http.request(url[, opts]) -> res | nil, err

function _M.request(url, opts)
  if type(url) ~= "string" then error("moonfork.http.request(url, opts): url must be a string", 2) end
  local o = options(opts)
  for hop = 0, o.redirects do
    local res, err = once(url, o)
    if not res then return nil, err end
    local st = res._st
    if not o.stream then
      local ok, rerr = read_whole(res, st)
      if not ok then return nil, rerr end
    elseif st.done then -- the whole body came with the head (or there is none): the connection goes back now
      res._last, st.piece = st.piece, nil
      res:_finish()
    end
    local loc = REDIRECT[res.status] and o.redirects > 0 and res.headers.location
    if type(loc) == "table" then loc = loc[1] end
    if not loc then return res end
    if hop == o.redirects then
      res:close()
      return nil, "too many redirects"
    end
    drain(res)
    url = resolve(res._u, loc)
    local ok, rerr = redirect(o, res, url)
    if not ok then return nil, rerr end
  end
end

return _M
