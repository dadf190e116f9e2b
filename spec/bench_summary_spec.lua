-- spec/bench_summary_spec.lua: bench/lib/summarize, the verdicts bench/run prints from its raw
-- results (lines "round workload contestant metric value", tab-separated), on made-up results.
local helpers = require "spec.helpers"

-- runs summarize on rows { round, workload, contestant, metric, value }; returns its output
local function summarize(rows)
  local dir = helpers.mktempdir()
  local path = dir .. "/results.tsv"
  local f = assert(io.open(path, "w"))
  for _, r in ipairs(rows) do f:write(table.concat(r, "\t"), "\n") end
  f:close()
  local p = assert(io.popen(helpers.shell_quote(helpers.ROOT .. "/bench/lib/summarize") .. " "
    .. helpers.shell_quote(path) .. " 3 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

-- three rounds of one workload: rps and p99 per contestant and round
local function rounds(workload, data)
  local rows = {}
  for name, per_round in pairs(data) do
    for r, v in ipairs(per_round) do
      rows[#rows + 1] = { r, workload, name, "rps", v[1] }
      rows[#rows + 1] = { r, workload, name, "p99_ms", v[2] }
      rows[#rows + 1] = { r, workload, name, "p50_ms", 0.5 }
    end
  end
  return rows
end

local function line_of(out, pattern)
  for l in out:gmatch("[^\n]+") do
    if l:find(pattern) then return l end
  end
  error("no line matching '" .. pattern .. "' in:\n" .. out)
end

describe("bench/lib/summarize", function()
  it("compares the paced p99s when both loads are within 5%, and counts the rounds moonfork's was no higher", function()
    local out = summarize(rounds("paced", {
      moonfork = { { 43000, 0.8 }, { 42900, 1.5 }, { 43100, 0.7 } },
      ["nginx-lua"] = { { 42000, 1.2 }, { 42100, 1.1 }, { 41900, 1.3 } },
    }))
    assert.matches("0%.80 vs 1%.20 ms at 43000 vs 42000 req/s  met$", line_of(out, "hello paced %(same load%) p99"))
    assert.matches("0%.80/1%.20 1%.50/1%.10 0%.70/1%.30; moonfork's no higher in 2 of 3$", line_of(out, "round by round %(moonfork/peer ms%)"))
  end)

  it("refuses to compare paced p99s when a contestant fell behind the pace", function()
    local out = summarize(rounds("paced", {
      moonfork = { { 43000, 0.8 }, { 43000, 0.8 }, { 43000, 0.8 } },
      ["nginx-lua"] = { { 38000, 5.0 }, { 38000, 5.0 }, { 38000, 5.0 } },
    }))
    assert.matches("not comparable: the loads differ by over 5%%$", line_of(out, "hello paced %(same load%) p99"))
  end)

  it("says NOT met when moonfork's saturated p99 median is the higher", function()
    local out = summarize(rounds("hello", {
      moonfork = { { 100000, 6.0 }, { 100000, 4.0 }, { 100000, 5.5 } },
      ["nginx-lua"] = { { 75000, 5.0 }, { 75000, 5.2 }, { 75000, 4.5 } },
    }))
    assert.matches("1%.33x  met$", line_of(out, "hello keep%-alive >= 1%.1x nginx%+Lua"))
    assert.matches("5%.50 vs 5%.00 ms  NOT met$", line_of(out, "hello keep%-alive p99 <= nginx%+Lua p99"))
    assert.matches("no higher in 1 of 3$", line_of(out, "round by round %(moonfork/peer ms%)"))
  end)

  it("says met when moonfork's saturated p99 median is no higher", function()
    local out = summarize(rounds("hello", {
      moonfork = { { 100000, 1.6 }, { 100000, 5.3 }, { 100000, 1.5 } },
      ["nginx-lua"] = { { 70000, 5.4 }, { 70000, 5.0 }, { 70000, 4.8 } },
    }))
    assert.matches("1%.60 vs 5%.00 ms  met$", line_of(out, "hello keep%-alive p99 <= nginx%+Lua p99"))
    assert.matches("no higher in 2 of 3$", line_of(out, "round by round %(moonfork/peer ms%)"))
  end)

  it("prints the p99 with the client apart, round by round, with no verdict", function()
    local out = summarize(rounds("apart", {
      moonfork = { { 100000, 6.0 }, { 100000, 4.0 }, { 100000, 5.5 } },
      ["nginx-lua"] = { { 75000, 5.0 }, { 75000, 5.2 }, { 75000, 4.5 } },
    }))
    assert.matches("^  %(no target%) hello keep%-alive p99, client apart: 5%.50 vs 5%.00 ms$",
      line_of(out, "client apart:"))
    assert.matches("no higher in 1 of 3$", line_of(out, "round by round %(moonfork/peer ms%)"))
    assert.is_nil(out:find("met", 1, true))
  end)
end)

-- bench/lib/common.sh's split of the CPUs for the "apart" workload (client first, server the rest)
describe("bench/lib/common.sh", function()
  -- sources common.sh under `taskset -c CPUS` (nil: as we are), runs SNIPPET; returns its output
  local function common(cpus, snippet)
    local dir = helpers.mktempdir()
    local cmd = string.format("BENCH=%s OUT=%s WORKERS=2 %sbash -c %s 2>&1",
      helpers.shell_quote(helpers.ROOT .. "/bench"), helpers.shell_quote(dir),
      cpus and ("taskset -c " .. cpus .. " ") or "",
      helpers.shell_quote("source \"$BENCH/lib/common.sh\"; " .. snippet))
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out
  end
  local show = 'echo "client=[$CLIENT_CPUS] server=[$SERVER_CPUS] threads=$CLIENT_N"'

  it("gives the client the first half of the CPUs it may use, one wrk thread each, and the server the rest", function()
    assert.equal("client=[0] server=[1] threads=1\n", common(nil, "ALL_CPUS=0,1; cpus_split; " .. show))
    assert.equal("client=[0,1] server=[2,3,6] threads=2\n", common(nil, "ALL_CPUS=0-3,6; cpus_split; " .. show))
    assert.equal("client=[4] server=[5] threads=1\n", common(nil, "ALL_CPUS=4-5; cpus_split; " .. show))
  end)

  it("has no apart split when it may use one CPU", function()
    assert.equal("client=[] server=[] threads=0\n", common("0", show))
  end)
end)
