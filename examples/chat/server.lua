-- examples/chat/server.lua: the comet chat. Every worker serves the page, takes posts and holds
-- clients open (WebSockets, Server-Sent Events and long polls, all fed from the same log);
-- chatlog.lua keeps all workers' logs in one order.
-- Who is online is kept in shared dicts (moonfork.shared), so every worker sees every user: `seen`
-- remembers each name's last-seen time, `online` holds the names heard from in the last ONLINE_S.
--
--   moonfork examples/chat/server.lua        then open http://127.0.0.1:8080
local moonfork = require "moonfork"
local cjson = require "cjson"
local chatlog = require "chatlog"
local streamlog = require "streamlog"

local encode, decode = cjson.encode, cjson.decode
local tonumber, type, pairs, ipairs, pcall, concat = tonumber, type, pairs, ipairs, pcall, table.concat
local find, gsub, len = string.find, string.gsub, string.len

local POLL_MS = (tonumber(os.getenv("CHAT_POLL_SECONDS")) or 25) * 1000
local PING_MS = (tonumber(os.getenv("CHAT_PING_SECONDS")) or 15) * 1000
local POST_MS = 10000
local ONLINE_S = tonumber(os.getenv("CHAT_ONLINE_SECONDS")) or 30 -- the page says "here" every 10 s
local MAX_TEXT, MAX_USER = 2000, 64

local serve_static = moonfork.static("public")
local log -- the chatlog, made once listen() gave us the mesh

-- Characters, not bytes: UTF-8 continuation bytes don't count.
local function chars(s)
  local _, cont = gsub(s, "[\128-\191]", "")
  return len(s) - cont
end

local function bad(res, why)
  res:json({ error = why }, 400)
end

-- The position ?since= names (numbers without Redis, stream ids with it); nil when it is not one.
local function since_of(req)
  local v = req.query.since
  if type(v) == "table" then v = v[1] end
  return log:cursor(v)
end

local function list_json(msgs)
  local parts = {}
  for i, m in ipairs(msgs) do parts[i] = m.json end
  return '{"messages":[' .. concat(parts, ",") .. "]}"
end

local function send_list(res, msgs)
  res:writeHead(200, { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" })
  res:finish(list_json(msgs))
end

-- Runs fn() now if this worker's log is complete, else once it is.
local function when_synced(res, fn)
  if log.synced then return fn() end
  local waiter
  waiter = log:wait(function()
    if res.finished then return end
    if log.synced then fn() else log:wait(waiter) end
  end)
  res:on("close", function() log:unwait(waiter) end)
end

-- ---- presence: moonfork.shared.seen / .online, the same in every worker ------------------------
local seen, online -- dicts, set once listen() declared them

-- The user was here just now: remembered (last seen) and online for ONLINE_S.
local function touch(user)
  local now = os.time()
  seen:set(user, now)
  online:set(user, now, ONLINE_S)
end

local function online_json()
  local names, parts = online:get_keys(0), {}
  table.sort(names)
  for i, name in ipairs(names) do parts[i] = encode({ user = name, seen = seen:get(name) }) end
  return '{"online":[' .. concat(parts, ",") .. "]}"
end

local function send_online(res)
  res:writeHead(200, { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" })
  res:finish(online_json())
end

-- The user from a JSON body {"user": ...}, or nil after answering 400.
local function user_of(req, res)
  local ok, body = pcall(decode, req.body)
  local why
  if not ok or type(body) ~= "table" then why = "the body must be a JSON object"
  elseif type(body.user) ~= "string" or not find(body.user, "%S") then why = "user is missing or empty"
  elseif chars(body.user) > MAX_USER then why = "user is over " .. MAX_USER .. " characters" end
  if why then
    bad(res, why)
    return nil
  end
  return body.user, body
end

-- POST /presence {"user"}: the page says its user is here; the answer is who is online.
local function presence(req, res)
  local user = user_of(req, res)
  if not user then return end
  touch(user)
  send_online(res)
end

local function post_message(req, res)
  local ok, body = pcall(decode, req.body)
  if not ok or type(body) ~= "table" then return bad(res, "the body must be a JSON object") end
  local user, text = body.user, body.text
  if type(user) ~= "string" or not find(user, "%S") then return bad(res, "user is missing or empty") end
  if type(text) ~= "string" or not find(text, "%S") then return bad(res, "text is missing or empty") end
  if chars(user) > MAX_USER then return bad(res, "user is over " .. MAX_USER .. " characters") end
  if chars(text) > MAX_TEXT then return bad(res, "text is over " .. MAX_TEXT .. " characters") end
  if streamlog.valid_key(body.key) == false then
    return bad(res, "key must be up to 100 letters, digits and - _ : .")
  end
  touch(user)
  local key, timer
  key = log:post(user, text, function(id, err)
    moonfork.clearTimer(timer)
    if res.finished then return end
    if id then return res:json({ id = id }, 201) end
    res:json({ error = "the message store (Redis) is unreachable: " .. tostring(err) ..
      "; the message was not acknowledged, send it again (with the same key it is stored once)" }, 503)
  end, body.key)
  -- no id within POST_MS (no leader reachable): say so rather than hang; the post may still land
  timer = moonfork.setTimeout(POST_MS, function()
    log:forget(key)
    if not res.finished then res:json({ error = "the message could not be numbered in time; retry" }, 503) end
  end)
  res:on("close", function()
    log:forget(key)
    moonfork.clearTimer(timer)
  end)
end

local polls = {} -- res -> true for long polls waiting

local function poll(req, res)
  local since = since_of(req)
  if not since then return bad(res, log.ID_HINT) end
  when_synced(res, function()
    local msgs = log:after(since)
    -- a worker on its way out answers at once: the client asks again, on another worker
    if #msgs > 0 or moonfork.draining then return send_list(res, msgs) end
    local waiter, timer
    waiter = log:wait(function()
      local m = log:after(since)
      if #m == 0 then return log:wait(waiter) end
      moonfork.clearTimer(timer)
      send_list(res, m)
    end)
    timer = moonfork.setTimeout(POLL_MS, function()
      log:unwait(waiter)
      if not res.finished then send_list(res, {}) end
    end)
    polls[res] = true
    res:on("close", function()
      polls[res] = nil
      log:unwait(waiter)
      moonfork.clearTimer(timer)
    end)
  end)
end

-- One message as an SSE event, made once per message (every stream sends the same bytes).
local function sse_of(m)
  local s = m.sse
  if not s then
    s = "id: " .. m.id .. "\ndata: " .. m.json .. "\n\n"
    m.sse = s
  end
  return s
end

-- Server-Sent Events: every message after Last-Event-ID (or ?since), then each new one as it comes.
local streams = {} -- res -> the last id sent on it, for every live stream (C fan-out: where it began)
local publish_new

-- The bytes that bring a stream from `last` up to the newest message: one SSE event in the usual case
-- (the same string for every stream), else the events after `last`, built once per `last` for as long
-- as the newest message stays the same (streams a fan-out reached late all share one backlog).
local backlog = { newest = nil } -- last id -> chunk, for the newest message in backlog.newest

local function chunk_after(newest, last)
  if newest.prev == last then return sse_of(newest) end
  if backlog.newest ~= newest then backlog = { newest = newest } end
  local chunk = backlog[last]
  if not chunk then
    local parts = {}
    for i, m in ipairs(log:after(last)) do parts[i] = sse_of(m) end
    chunk = concat(parts)
    backlog[last] = chunk
  end
  return chunk
end

-- Sends what `res` has not seen after `last`; returns the new last id, or nil when the stream ended.
local function stream_send(res, last)
  local kept = log.log
  local newest = kept[#kept]
  if not newest or newest.id == last or not log:is_after(newest.id, last) then return last end
  local ok = res:write(chunk_after(newest, last))
  if ok == false then
    -- A client this slow would make us hold its backlog: end the stream, and it reconnects
    -- with Last-Event-ID for what it missed.
    res:finish()
  end
  if not ok then return nil end -- ended, or the client is gone
  return newest.id
end

-- The SSE fan-out in C (server/http_chan.c): each stream, once caught up from the log, is a member of
-- this worker's channel "chat", and each new message is formatted once and published to it from the
-- log's listener, in the callback that grew the log: a stream that catches up and then subscribes can
-- neither miss nor repeat a message. CHAT_SSE_FANOUT=lua keeps the loop over streams in Lua below
-- (fan_pass), for the bench to compare. pub_last: the newest message the channel's members have.
local SSE_IN_C = os.getenv("CHAT_SSE_FANOUT") ~= "lua"
local pub_last
local solo = {} -- (C fan-out) the rare stream that could not join: res -> true, written by fan_pass

function publish_new()
  local kept = log.log
  local newest = kept[#kept]
  if pub_last == nil or not newest or newest.id == pub_last or not log:is_after(newest.id, pub_last) then return end
  if moonfork.http.subscribers("chat") > 0 then moonfork.http.publish("chat", chunk_after(newest, pub_last)) end
  pub_last = newest.id
end

local function events(req, res)
  local h = req.headers["last-event-id"]
  local last = h and log:cursor(h) or since_of(req)
  if not last then return bad(res, log.ID_HINT) end
  res:writeHead(200, {
    ["Content-Type"] = "text/event-stream",
    ["Cache-Control"] = "no-store",
    ["X-Accel-Buffering"] = "no",
  })
  res:write("retry: 2000\n\n")
  res:on("close", function() streams[res] = nil end)
  when_synced(res, function()
    if res.finished then return end
    last = stream_send(res, last) -- the backlog
    if last == nil then return end
    if moonfork.draining then return res:finish() end -- reconnect to a worker that stays
    streams[res] = last
    if SSE_IN_C then
      publish_new() -- the members so far are brought to where this stream is, then it joins them
      if pub_last == nil or moonfork.http.subscribers("chat") == 0 then pub_last = last end
      if last == pub_last then return res:subscribe("chat") end
      solo[res] = true -- its ?since is past this worker's newest message: it stays on the Lua loop
      res:on("close", function() solo[res] = nil end)
    end
  end)
end

-- WebSocket: GET /ws?since=ID. Every message after ID, then each new one as it comes, one text frame
-- each, with the JSON the other transports send. On a reload or stop the worker closes every socket
-- with 1001 (moonfork does it): the page reconnects with ?since= its last id, to a worker that stays.
--
-- The fan-out is C's (server/ws_chan.c), as for SSE: a socket first catches up from the log here, one
-- ws:send per message; over the high-water mark (ws:send says false) it is sent no more until its
-- "drain". Once it has everything up to the channel's position (ws_pub_last, the newest message the
-- channel's members have) and nothing over the mark, it joins this worker's channel "chat" and leaves
-- the Lua loop; each new message is then sent to the members once, from the log's listener, in the
-- callback that grew the log (ws_publish_new, worker-local: every worker gets every message from the
-- log). Nothing runs between the catch-up's last send and the join, and the channel's position moves
-- only when the members are sent the messages up to it: a socket can neither miss nor repeat one.
-- A member whose queue is over the mark when a message comes is closed by ws_chan with 1008 ("subscriber
-- too slow"); the page comes back with its last id. A socket whose position is not the channel's (its
-- ?since is past this worker's newest message) stays on the Lua loop (fan_pass) until it reaches it.
-- CHAT_WS_FANOUT=lua keeps every socket on the Lua loop (sent with ws:send, paused until "drain"), for
-- the bench to compare.
local WS_IN_C = os.getenv("CHAT_WS_FANOUT") ~= "lua"
local sockets = {} -- ws -> { last = id sent, paused = waiting for drain }, for the sockets on the Lua loop
local ws_pub_last -- (C fan-out) the newest message the members of "chat" have; nil until one joins

-- (C fan-out) Sends the channel's members every message after ws_pub_last, one frame each.
local function ws_publish_new()
  local kept = log.log
  local newest = kept[#kept]
  if ws_pub_last == nil or not newest or newest.id == ws_pub_last or not log:is_after(newest.id, ws_pub_last) then
    return
  end
  local ws = moonfork.websocket
  if ws.subscribers("chat") > 0 then
    if newest.prev == ws_pub_last then
      ws.publishLocal("chat", newest.json)
    else
      for _, m in ipairs(log:after(ws_pub_last)) do ws.publishLocal("chat", m.json) end
    end
  end
  ws_pub_last = newest.id
end

-- (C fan-out) A socket that has every message up to the channel's position joins the channel and
-- leaves the Lua loop. (With no member, the channel takes this socket's position.)
local function ws_join(ws, st)
  ws_publish_new() -- the members are brought to the newest message first
  if ws_pub_last == nil or moonfork.websocket.subscribers("chat") == 0 then ws_pub_last = st.last end
  if st.last ~= ws_pub_last then return end
  local ok, err = ws:subscribe("chat")
  if ok ~= nil or err == "closed" then sockets[ws] = nil end -- (out of memory: it stays on the loop)
end

-- Sends `ws` what it lacks (on the Lua loop: everything after its last id, in order), then, caught up
-- and not over the high-water mark, makes it a member of the channel (C fan-out).
local function ws_push(ws)
  local st = sockets[ws]
  if not st or st.paused then return end
  local kept = log.log
  local newest = kept[#kept]
  if newest and newest.id ~= st.last and log:is_after(newest.id, st.last) then
    local list = newest.prev == st.last and { newest } or log:after(st.last)
    for i = 1, #list do
      local ok = ws:send(list[i].json)
      if ok == nil then sockets[ws] = nil return end -- closed
      st.last = list[i].id
      if ok == false then st.paused = true return end
    end
  end
  if WS_IN_C then ws_join(ws, st) end
end

local function websocket(req, res)
  local since = since_of(req)
  if not since then return bad(res, log.ID_HINT) end
  local ws = moonfork.websocket.upgrade(req, res, { maxPayload = "16k", pingInterval = PING_MS,
    idleTimeout = 3 * PING_MS })
  if not ws then return end -- it answered 400 or 426
  local st, closed, waiter = { last = since }, false, nil
  ws:on("close", function()
    closed = true
    sockets[ws] = nil
    if waiter then log:unwait(waiter) end
  end)
  ws:on("drain", function()
    st.paused = false
    ws_push(ws)
  end)
  local function start()
    if closed then return end
    if moonfork.draining then return ws:close(1001, "going away") end
    sockets[ws] = st
    ws_push(ws) -- the backlog (and, in C, the channel)
  end
  if log.synced then return start() end
  waiter = log:wait(function()
    if log.synced then start() else log:wait(waiter) end
  end)
end

local server = moonfork.http.createServer(function(req, res)
  local path, method = req.path, req.method
  if path == "/messages" and method == "POST" then return post_message(req, res) end
  if path == "/messages" and method == "GET" then
    local since = since_of(req)
    if not since then return bad(res, log.ID_HINT) end
    return when_synced(res, function() send_list(res, log:after(since)) end)
  end
  if path == "/poll" and method == "GET" then return poll(req, res) end
  if path == "/events" and method == "GET" then return events(req, res) end
  if path == "/ws" and method == "GET" then return websocket(req, res) end
  if path == "/presence" and method == "POST" then return presence(req, res) end
  if path == "/online" and method == "GET" then return send_online(res) end
  if serve_static(req, res) then return end
  if path == "/messages" or path == "/poll" or path == "/events" or path == "/ws" then
    res:setHeader("Allow", path == "/messages" and "GET, POST" or "GET")
    return res:json({ error = "method not allowed" }, 405)
  end
  res:json({ error = "not found" }, 404)
end)

local nodes = moonfork.listen({ port = 8080, shared = { seen = "4m", online = "1m" } }, server)
seen, online = moonfork.shared.seen, moonfork.shared.online

-- With a Redis, the log is a Redis Stream shared by every host (streamlog.lua); without, the workers
-- of this host keep it among themselves (chatlog.lua).
local url = moonfork.redisUrl -- --redis URL, or listen{ redis = URL }
if url and url ~= "" then
  log = streamlog.new(nodes, { url = url, keep = 500 })
else
  log = chatlog.new(nodes, { keep = 500, workers = moonfork.workers })
end
log:attach()

-- The fan-out in Lua: each new message goes to every stream and every WebSocket on the Lua loop (all of
-- them with CHAT_SSE_FANOUT=lua and CHAT_WS_FANOUT=lua; with the C channels, only the few that are not
-- members: catching up, waiting for "drain", or ahead of this worker), in slices of FANOUT_SLICE
-- with a loop turn between them, so that while a worker writes to its thousands of streams it still
-- reads posts and mesh messages, and the leader numbers the next post at once. The turn is
-- moonfork.sleep(0), which ends after the worker has polled for input.
-- One pass runs at a time; a message that comes during a pass is picked up by the streams the pass
-- has not reached yet (each is sent everything after its own last id, in order), and a new pass
-- follows for the ones it had. So every stream gets every message once, in order, and a stream is
-- never sent message n+1 before n.
local FANOUT_SLICE = math.max(1, math.floor(tonumber(os.getenv("CHAT_FANOUT_SLICE")) or 2000))
local fanning, again = false, false

local function fan_pass()
  local list, n = {}, 0
  for res in pairs(SSE_IN_C and solo or streams) do n = n + 1 list[n] = res end
  for ws in pairs(sockets) do n = n + 1 list[n] = ws end
  for i = 1, n do
    local c = list[i]
    local last = streams[c]
    if last ~= nil then
      streams[c] = stream_send(c, last)
    elseif sockets[c] then
      ws_push(c)
    end
    if i % FANOUT_SLICE == 0 and i < n then moonfork.sleep(0) end
  end
end

local function fan_out()
  repeat
    again = false
    local ok, err = pcall(fan_pass)
    if not ok then moonfork.log("chat: fan-out: " .. tostring(err)) end
  until not again
  fanning = false
end

log:listen(function()
  if SSE_IN_C then publish_new() end
  if WS_IN_C then ws_publish_new() end
  if next(sockets) == nil and next(SSE_IN_C and solo or streams) == nil then return end
  if fanning then again = true return end
  fanning = true
  moonfork.setTimeout(0, fan_out)
end)

-- This worker is being replaced or stopped: answer the long polls (empty) and end the streams now,
-- so their clients reconnect, with their last id, to a worker that stays.
moonfork.on("drain", function()
  for res in pairs(polls) do send_list(res, {}) end
  for res in pairs(streams) do res:finish() end
end)

-- A comment line keeps proxies from closing quiet streams.
moonfork.setInterval(PING_MS, function()
  if SSE_IN_C then
    moonfork.http.publish("chat", ": ping\n\n")
    for res in pairs(solo) do res:write(": ping\n\n") end
    return
  end
  local list, n = {}, 0
  for res in pairs(streams) do n = n + 1 list[n] = res end
  for i = 1, n do
    if streams[list[i]] ~= nil then list[i]:write(": ping\n\n") end
    if i % FANOUT_SLICE == 0 and i < n then moonfork.sleep(0) end
  end
end)
