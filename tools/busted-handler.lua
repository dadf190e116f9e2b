-- tools/busted-handler.lua: a busted output handler for tools/run-tests.
-- Prints one line per test as it ends (status, file:line, full name, time), then every
-- failure and error again with its message and traceback, then a count line; and, when
-- MOONFORK_BUSTED_COUNTS names a file, writes "passed failed skipped" into it, so the
-- caller reads the counts without parsing what the specs themselves print.
-- Used as: busted -o tools/busted-handler.lua spec
local io_write, io_flush = io.write, io.flush
local format, gsub = string.format, string.gsub
local clock = os.clock

return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.base")()
  local pretty_ok, pretty = pcall(require, "pl.pretty")

  local started = {}   -- element -> start time (seconds, wall clock from socket if any)
  local now = clock
  do
    local ok, socket = pcall(require, "socket")
    if ok and socket.gettime then now = socket.gettime end
  end

  local function out(s)
    io_write(s, "\n")
    io_flush()
  end

  local function where(t)
    local tr = t and t.element and t.element.trace
    if tr and tr.short_src then
      return tr.short_src .. ":" .. tostring(tr.currentline)
    end
    return nil
  end

  local function message_of(t)
    local m = t.message
    if m == nil then return "nil error" end
    if type(m) ~= "string" then
      m = pretty_ok and pretty.write(m) or tostring(m)
    end
    return m
  end

  local function indent(s, pad)
    return pad .. gsub(s, "\n", "\n" .. pad)
  end

  local function describe_failure(t, kind, secs)
    local loc = where(t)
    local head = loc and format("%s %s  %s", kind, loc, t.name or "?")
                      or format("%s %s", kind, t.name or "?")
    local s = head .. (secs or "") .. "\n" .. indent(message_of(t), "      ")
    if t.trace and t.trace.traceback and options.verbose then
      s = s .. "\n" .. indent(gsub(t.trace.traceback, "^\n", ""), "      ")
    end
    return (gsub(s, "%s+$", ""))
  end

  handler.testStart = function(element)
    started[element] = now()
    return nil, true
  end

  handler.testEnd = function(element, parent, status)
    local t0 = started[element]
    started[element] = nil
    local secs = t0 and format(" (%.2f s)", now() - t0) or ""
    if status == "success" then
      local t = handler.successes[#handler.successes]
      out(format("ok    %s  %s%s", where(t) or "?", t.name, secs))
    elseif status == "pending" then
      local t = handler.pendings[#handler.pendings]
      local why = type(t.message) == "string" and (": " .. t.message) or ""
      out(format("SKIP  %s  %s%s", where(t) or "?", t.name, why))
    elseif status == "failure" then
      out(describe_failure(handler.failures[#handler.failures], "FAIL ", secs))
    elseif status == "error" then
      out(describe_failure(handler.errors[#handler.errors], "ERROR", secs))
    end
    return nil, true
  end

  -- errors outside an `it` (a spec file that does not load, a failing before_each, ...)
  handler.error = function(element)
    if element.descriptor ~= "it" then
      out(describe_failure(handler.errors[#handler.errors], "ERROR"))
    end
    return nil, true
  end

  handler.suiteEnd = function()
    local failed = handler.failuresCount + handler.errorsCount
    if failed > 0 then
      out("")
      out("Failures and errors:")
      for _, t in ipairs(handler.failures) do out(describe_failure(t, "FAIL ")) end
      for _, t in ipairs(handler.errors) do out(describe_failure(t, "ERROR")) end
    end
    out(format("[busted] ok %d, failed %d, errors %d, skipped %d in %.2f s",
               handler.successesCount, handler.failuresCount, handler.errorsCount,
               handler.pendingsCount, handler.getDuration()))
    local path = os.getenv("MOONFORK_BUSTED_COUNTS")
    if path and path ~= "" then
      local f = assert(io.open(path, "w"))
      f:write(format("%d %d %d\n", handler.successesCount, failed, handler.pendingsCount))
      f:close()
    end
    return nil, true
  end

  busted.subscribe({ "test", "start" }, handler.testStart, { predicate = handler.cancelOnPending })
  busted.subscribe({ "test", "end" }, handler.testEnd, { predicate = handler.cancelOnPending })
  busted.subscribe({ "error" }, handler.error)
  busted.subscribe({ "failure" }, handler.error)
  busted.subscribe({ "suite", "end" }, handler.suiteEnd)

  return handler
end
