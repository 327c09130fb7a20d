-- wrk script: GET paths drawn at random from a file (one path a line), then one JSON line.
-- wrk -t2 -c32 -d20s -s bench/wrk_paths.lua http://127.0.0.1:8000 -- paths.txt

local paths = {}
local counter = 0

-- Runs once per thread in the main state: a distinct random seed for each thread.
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then paths[#paths + 1] = line end
  end
  math.randomseed(seed or 1)
end

function request()
  return wrk.format("GET", paths[math.random(#paths)])
end

-- One line the harness parses; latencies in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
