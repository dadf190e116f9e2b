-- spec/ops_spec.lua: what keeps a server healthy unattended: the watchdog (a handler stuck in
-- `while true do end`), recycling (--max-requests, --max-memory), the access and error logs and their
-- reopening on SIGUSR1 (logrotate), and --user (workers drop root after the master bound the port).
local helpers = require "spec.helpers"

local decode = helpers.json_decode

local function lines_of(path)
  local out = {}
  for l in (helpers.read_file(path) or ""):gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

-- uid from /proc/PID/status (the real one, first of the four)
local function uid_of(pid)
  local s = helpers.read_file("/proc/" .. pid .. "/status")
  return s and tonumber(s:match("\nUid:%s*(%d+)"))
end

local function get_ok(srv, path, headers)
  local r, err = srv:get(path, headers)
  assert(r, "GET " .. path .. ": " .. tostring(err) .. "\nlog:\n" .. srv:log_text())
  assert.equal(200, r.status, r.body)
  return r
end

describe("operations", function()
  after_each(function() helpers.stop_all() end)

  describe("the watchdog", function()
    it("kills a worker stuck in a handler, names the request, respawns it; the other worker serves meanwhile", function()
      local srv = helpers.start("reload_app", { "--workers", "2", "--watchdog", "1" })
      -- a connection on worker 1, to spin it
      local spin = helpers.conn_on(srv, 1)
      local stuck, other = srv.workers[1], srv.workers[2]
      assert(spin:send(helpers.build_request("GET", "/spin?x=1")))
      srv:wait_log("^spin started in " .. stuck .. "$")

      local served = 0
      local kill_line = "watchdog: worker 1 %(pid " .. stuck .. "%) has not turned its event loop for"
      local deadline = helpers.now() + 20
      while srv:count_log(kill_line) == 0 do
        assert(helpers.now() < deadline, "no watchdog kill within 20 s; log:\n" .. srv:log_text())
        local v = decode(get_ok(srv, "/version").body)
        assert.equal(other, v.pid) -- the stuck worker takes nothing
        served = served + 1
      end
      assert.is_true(served > 0)
      local line = srv:wait_log(kill_line)
      assert.matches("for %d+%.%d s %(last running: GET /spin%?x=1%): killing it$", line)
      srv:wait_log("worker 1 %(pid " .. stuck .. "%) killed by signal 9 %(SIGKILL%); respawning in %d+ ms")
      local new = tonumber(srv:wait_log("worker 1 %(pid %d+%) ready", 2):match("%(pid (%d+)%)"))
      assert.are_not.equal(stuck, new)
      assert.is_true(spin:closed_by_peer(10))
      spin:close()
      assert.is_true((helpers.wait_gone({ stuck }, 10)))
      -- both serve again
      local seen = {}
      for _ = 1, 300 do
        seen[decode(get_ok(srv, "/version").body).pid] = true
        if seen[new] and seen[other] then break end
      end
      assert.is_true(seen[new] and seen[other], "requests did not reach both workers")
      assert.equal(1, srv:count_log("watchdog:"))
    end)

    it("leaves a worker alone that sleeps in a handler (its loop turns)", function()
      local srv = helpers.start("reload_app", { "--workers", "1", "--watchdog", "0.5" })
      local r = get_ok(srv, "/slow?ms=1500")
      assert.equal("slow v1", r.body)
      assert.equal(0, srv:count_log("watchdog"))
      assert.are.same({ srv.workers[1] }, helpers.live_children(srv.pid))
    end)
  end)

  describe("recycling", function()
    it("--max-requests 20: a replacement takes over after about 20 requests, and no request fails", function()
      local srv = helpers.start("reload_app", { "--workers", "1", "--max-requests", "20" })
      local first = srv.workers[1]
      local pattern = "worker 1 %(pid " .. first .. "%) served (%d+) requests %(%-%-max%-requests%): starting its replacement"
      local made = 0
      while srv:count_log(pattern) == 0 do
        assert(made < 5000, "no recycling after " .. made .. " requests; log:\n" .. srv:log_text())
        get_ok(srv, "/")
        made = made + 1
      end
      assert.is_true(made >= 20, "recycled after " .. made .. " requests")
      local k = tonumber(srv:wait_log(pattern):match(pattern))
      assert.is_true(k >= 20, "recycled at " .. k .. " requests")
      local new = tonumber(srv:wait_log("worker 1 %(pid %d+%) ready", 2):match("%(pid (%d+)%)"))
      srv:wait_log("retiring worker 1 %(pid " .. first .. "%): replaced")
      srv:wait_log("%[worker 1 " .. first .. "%] retiring")
      for _ = 1, 10 do assert.equal(new, decode(get_ok(srv, "/version").body).pid) end
      assert.is_true((helpers.wait_gone({ first }, 10)))
      assert.equal(0, srv:count_log("respawning"))
      -- the replacement is not recycled at once: it has its own count
      assert.equal(1, srv:count_log("%-%-max%-requests"))
    end)

    it("--max-memory: a worker over the limit is replaced gracefully", function()
      -- 1 MB: any LuaJIT worker is over it, so each new worker is recycled in turn
      local srv = helpers.start("reload_app", { "--workers", "1", "--max-memory", "1" })
      local first = srv.workers[1]
      srv:wait_log("worker 1 %(pid " .. first .. "%) uses %d+ MB %(%-%-max%-memory%): starting its replacement")
      srv:wait_log("retiring worker 1 %(pid " .. first .. "%): replaced")
      for _ = 1, 10 do get_ok(srv, "/") end
      assert.equal(0, srv:count_log("respawning"))
    end)
  end)

  describe("the access log", function()
    local LINE = '^127%.0%.0%.1 %- %- %[(%d%d/%a%a%a/%d%d%d%d:%d%d:%d%d:%d%d [%+%-]%d%d%d%d)%] "([^"]*)" (%d%d%d) (%S+) "([^"]*)" "([^"]*)"$'

    it("has one combined-format line per response, from every worker", function()
      local file = helpers.mktempdir() .. "/access.log"
      local srv = helpers.start("reload_app", { "--workers", "2", "--access-log", file })
      local pids, n = {}, 0
      for i = 1, 40 do
        local r = get_ok(srv, "/version?i=" .. i, { { "User-Agent", "spec/" .. i }, { "Referer", "http://ref/" .. i } })
        pids[decode(r.body).pid] = true
        n = n + 1
      end
      local r = assert(srv:get("/missing", { { "User-Agent", 'quote " here' } }))
      assert.equal(404, r.status)
      n = n + 1
      assert.truthy(helpers.wait_for(function() return #lines_of(file) >= n end, 10),
        "access log has " .. #lines_of(file) .. " lines, want " .. n)
      local lines = lines_of(file)
      assert.equal(n, #lines)
      local by_req = {}
      for _, l in ipairs(lines) do
        local when, req, status, bytes, ref, ua = l:match(LINE)
        assert.truthy(when, "not combined format: " .. l)
        by_req[req] = { status = tonumber(status), bytes = bytes, ref = ref, ua = ua }
      end
      for i = 1, 40 do
        local e = by_req["GET /version?i=" .. i .. " HTTP/1.1"]
        assert.truthy(e, "no line for request " .. i)
        assert.equal(200, e.status)
        assert.equal("spec/" .. i, e.ua)
        assert.equal("http://ref/" .. i, e.ref)
        assert.truthy(tonumber(e.bytes) > 0)
      end
      local e = by_req["GET /missing HTTP/1.1"]
      assert.equal(404, e.status)
      assert.equal("10", e.bytes) -- "not found\n"
      assert.equal("-", e.ref)
      assert.equal("quote \\x22 here", e.ua)
      assert.truthy(pids[srv.workers[1]] and pids[srv.workers[2]], "the requests did not reach both workers")
    end)

    it("is reopened on SIGUSR1 after a rename: new lines go to the new file and none are lost", function()
      local dir = helpers.mktempdir()
      local file = dir .. "/access.log"
      local srv = helpers.start("reload_app", { "--workers", "2", "--access-log", file })
      local made = 0
      local function req(tag)
        made = made + 1
        return decode(get_ok(srv, "/version?" .. tag .. "=" .. made).body).pid
      end
      for _ = 1, 10 do req("before") end
      assert(os.rename(file, dir .. "/access.log.1"))
      for _ = 1, 10 do req("moved") end -- still written to the renamed file
      srv:signal("USR1")
      srv:wait_log("log files reopened")
      -- the workers reopen when their loop sees the signal: from the first line each one writes
      -- to the new file, all its later lines go there too
      local moved_on = {}
      local deadline = helpers.now() + 20
      while not (moved_on[srv.workers[1]] and moved_on[srv.workers[2]]) do
        assert(helpers.now() < deadline, "a worker never wrote to the new file; log:\n" .. srv:log_text())
        local pid = req("probe")
        local want = "/version?probe=" .. made .. " "
        local found = helpers.wait_for(function()
          for _, f in ipairs({ file, dir .. "/access.log.1" }) do
            for _, l in ipairs(lines_of(f)) do
              if l:find(want, 1, true) then return f end
            end
          end
        end, 10)
        assert.truthy(found, "no line for " .. want)
        if found == file then moved_on[pid] = true end
      end
      local after = {}
      for i = 1, 20 do after[i] = "/version?after=" .. (made + 1) .. " "; req("after") end
      local total = made
      assert.truthy(helpers.wait_for(function()
        return #lines_of(file) + #lines_of(dir .. "/access.log.1") >= total
      end, 10))
      local new, old = lines_of(file), lines_of(dir .. "/access.log.1")
      assert.equal(total, #new + #old, "lines lost or doubled")
      local new_text = table.concat(new, "\n")
      for _, a in ipairs(after) do assert.truthy(new_text:find(a, 1, true), a .. " not in the new file") end
      local old_text = table.concat(old, "\n")
      for i = 1, 20 do
        local tag = (i <= 10 and "before=" or "moved=") .. i .. " "
        assert.truthy(old_text:find("/version?" .. tag, 1, true), tag .. " not in the renamed file")
      end
    end)

    it("keeps the lines of the last requests a retired worker served", function()
      local dir = helpers.mktempdir()
      local file = dir .. "/access.log"
      local ctl = dir .. "/control.sock"
      local srv = helpers.start("reload_app", { "--workers", "1", "--access-log", file, "--control", ctl })
      local c = srv:connect()
      assert.equal(404, assert(c:request("GET", "/first")).status)
      assert(c:send(helpers.build_request("GET", "/slow?ms=300")))
      local st, _, err = helpers.run({ "reload", "--control", ctl })
      assert.equal(0, st, err)
      local r = assert(c:receive({ timeout = 10 }))
      assert.equal(200, r.status)
      assert.equal("close", r.headers.connection)
      assert.is_true(c:closed_by_peer(10))
      c:close()
      srv:wait_log("%[worker 1 " .. srv.workers[1] .. "%] drained; exiting")
      assert.is_true((helpers.wait_gone({ srv.workers[1] }, 10)))
      local text = helpers.read_file(file) or ""
      assert.truthy(text:find('"GET /first HTTP/1.1" 404', 1, true), "line of /first missing:\n" .. text)
      assert.truthy(text:find('"GET /slow?ms=300 HTTP/1.1" 200', 1, true),
        "the line of the retired worker's last request is missing:\n" .. text)
    end)
  end)

  describe("the error log", function()
    it("--error-log takes the log instead of stderr and is reopened on SIGUSR1", function()
      local dir = helpers.mktempdir()
      local file = dir .. "/error.log"
      local srv = helpers.start("reload_app", { "--workers", "1", "--error-log", file }, { wait = false })
      srv.log = file -- the helpers read the log from here now
      srv:wait_listening()
      assert.equal("", helpers.read_file(srv.dir .. "/log") or "")
      local wpid = srv.workers[1]
      assert(os.rename(file, dir .. "/error.log.1"))
      srv:signal("USR1")
      srv:wait_log("log files reopened") -- the master's line is in the new file
      -- the worker's lines too, once it has seen the signal (each /poll logs a line)
      local old_file = dir .. "/error.log.1"
      local polls, moved = 0, false
      while not moved do
        assert(polls < 50, "the worker never wrote to the new error log")
        local c = srv:connect()
        assert(c:send(helpers.build_request("GET", "/poll")))
        polls = polls + 1
        local pattern = "poll waiting in " .. wpid .. "\n"
        assert.truthy(helpers.wait_for(function()
          local n = 0
          for _ in ((helpers.read_file(file) or "") .. (helpers.read_file(old_file) or "")):gmatch(pattern) do n = n + 1 end
          return n >= polls
        end, 10), "a worker line went nowhere")
        moved = (helpers.read_file(file) or ""):find(pattern) ~= nil
        c:close()
      end
      assert.is_nil(helpers.read_file(dir .. "/error.log.1"):find("log files reopened", 1, true))
      srv:signal("TERM")
      assert.equal(0, srv:exit_status(20))
      srv:wait_log("all workers exited; bye")
    end)
  end)

  describe("--user", function()
    it("runs the workers as that user while the master stays root", function()
      if uid_of("self") ~= 0 then
        pending("the suite does not run as root")
        return
      end
      local p = io.popen("id -u nobody")
      local nobody = tonumber(p:read("*l") or "")
      p:close()
      assert.truthy(nobody, "no user nobody")
      local script = helpers.fixture_copy("reload_app")
      local srv = helpers.start(script, { "--workers", "2", "--user", "nobody" })
      assert.equal(0, uid_of(srv.pid))
      for _, w in ipairs(srv.workers) do assert.equal(nobody, uid_of(w)) end
      assert.equal(0, srv:count_log("running as root without %-%-user"))
      assert.equal(200, get_ok(srv, "/").status)
      -- a reload's and a respawn's workers too
      srv:signal("HUP")
      srv:wait_log("reload done")
      for _, w in ipairs(helpers.live_children(srv.pid)) do assert.equal(nobody, uid_of(w)) end
    end)

    it("warns when the master runs as root without --user", function()
      if uid_of("self") ~= 0 then
        pending("the suite does not run as root")
        return
      end
      local srv = helpers.start("reload_app", { "--workers", "1" })
      srv:wait_log("warning: running as root without %-%-user")
      assert.equal(0, uid_of(srv.workers[1]))
    end)
  end)
end)
