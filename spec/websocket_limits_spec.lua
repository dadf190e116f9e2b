-- spec/websocket_limits_spec.lua: a WebSocket is one of the worker's connections until it closes, as
-- nginx's worker_connections counts every connection: it holds its place under --max-connections
-- (the worker stops accepting, and takes the next connection once a WebSocket closes), it is counted
-- in `moonfork status --json` (connections, and websockets among them), and in the line a worker
-- logs when it stops. Against spec/fixtures/ws_app.lua's /plain echo, with raw frames.
local helpers = require "spec.helpers"
local wsc = require "spec.ws_client"

local frame, read_frame, read_close = wsc.frame, wsc.read_frame, wsc.read_close

describe("websocket limits", function()
  after_each(function()
    helpers.stop_all()
  end)

  -- ws_app.lua on one worker with a control socket; returns the server and the socket's path.
  local function start(extra)
    local path = helpers.mktempdir() .. "/control.sock"
    local args = { "--workers", "1", "--control", path }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    local srv = helpers.start("ws_app", args)
    srv:wait_log("control socket: " .. helpers.escape_pattern(path))
    return srv, path
  end

  -- The worker's entry in `moonfork status --json`.
  local function worker_status(path)
    local st, out, err = helpers.ctl(path, nil, "status", "--json")
    assert.are.equal(0, st, err)
    return helpers.json_decode(out).workers[1]
  end

  -- Waits until the status says `conns` connections, `ws` of them WebSockets.
  local function wait_counts(path, conns, ws)
    local last
    local ok = helpers.wait_for(function()
      last = worker_status(path)
      return last.connections == conns and last.websockets == ws
    end, 10)
    assert(ok, string.format("status never said %d connections and %d websockets (last: %s and %s)", conns, ws,
      tostring(last and last.connections), tostring(last and last.websockets)))
  end

  local function open(srv)
    local c, resp = wsc.open(srv.port, "/plain")
    assert.are.equal(101, resp.status)
    return c
  end

  local function echo(c, text)
    assert(c:send(frame(wsc.TEXT, text)))
    local f = assert(read_frame(c))
    assert.are.equal(text, f.payload)
  end

  describe("--max-connections", function()
    it("counts open WebSockets: a connection past the limit waits until one closes, then is served", function()
      local srv, path = start({ "--max-connections", "3" })
      local w = { open(srv), open(srv), open(srv) }
      for i, c in ipairs(w) do echo(c, "hello " .. i) end
      wait_counts(path, 3, 3)

      local late = srv:connect() -- the kernel completes its handshake; the worker must not take it
      assert(late:send(helpers.build_request("GET", "/events")))
      -- A round trip on a WebSocket sent after it: the worker has polled since the 4th connection was
      -- queued, and an accept would have shown in the counts (they change as it happens) and answered it.
      echo(w[1], "still here")
      local s = worker_status(path)
      assert.are.equal(3, s.connections, "the 4th connection was accepted")
      assert.is_true(late:quiet(0), "the 4th connection was answered")

      -- One WebSocket closes (the close handshake): the waiting connection is taken and served.
      assert(w[1]:send(frame(wsc.CLOSE, wsc.close_payload(1000, "bye"))))
      assert.are.equal(1000, assert(read_close(w[1])).code)
      local resp = assert(late:receive())
      assert.are.equal(200, resp.status)
      wait_counts(path, 3, 2) -- two WebSockets and the kept-alive 4th connection

      -- The others go (a TCP close without a handshake is one too): the counts come down to none.
      late:close()
      wait_counts(path, 2, 2)
      w[2]:close()
      wait_counts(path, 1, 1)
      w[3]:close()
      wait_counts(path, 0, 0)
      -- ...and under the limit the worker accepts again.
      assert.are.equal(200, assert(srv:get("/events")).status)
    end)

    it("an HTTP connection that waits at the limit is taken when a WebSocket closes", function()
      local srv, path = start({ "--max-connections", "2", "--keepalive-timeout", "120" })
      local w = open(srv)
      echo(w, "one")
      local keep = srv:connect()
      assert.are.equal(200, assert(keep:request("GET", "/events")).status)
      wait_counts(path, 2, 1)
      local late = srv:connect()
      assert(late:send(helpers.build_request("GET", "/events")))
      echo(w, "two")
      assert.is_true(late:quiet(0), "the 3rd connection was answered at the limit")
      w:close()
      assert.are.equal(200, assert(late:receive()).status)
      wait_counts(path, 2, 0)
    end)
  end)

  describe("the stop", function()
    it("logs the WebSockets among the open connections, and closes them with 1001", function()
      local srv, path = start()
      local w = { open(srv), open(srv) }
      for i, c in ipairs(w) do echo(c, "hello " .. i) end
      local keep = srv:connect()
      assert.are.equal(200, assert(keep:request("GET", "/events")).status)
      wait_counts(path, 3, 2)
      srv:signal("TERM")
      local line = srv:wait_log("stopping %([^)]*%): %d+ connection%(s%) open")
      assert.are.equal("3", line:match(": (%d+) connection%(s%) open"), line)
      for _, c in ipairs(w) do
        assert.are.equal(1001, assert(read_close(c)).code)
        assert(c:send(frame(wsc.CLOSE, wsc.close_payload(1001))))
      end
      assert.are.equal(0, srv:exit_status(10))
    end)

    it("counts a WebSocket still open at the end of --grace among those it closes", function()
      local srv, path = start({ "--grace", "0.5" })
      local c = open(srv)
      echo(c, "hello")
      wait_counts(path, 1, 1)
      srv:signal("TERM")
      assert.are.equal(1001, assert(read_close(c)).code) -- not answered: the close wait (3 s) outlasts --grace
      srv:wait_log("grace period over: closing 1 connection%(s%) and exiting")
      assert.are.equal(0, srv:exit_status(10))
    end)
  end)
end)
