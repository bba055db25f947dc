-- wrk script for the failover run: counts every answer that is not 2xx (wrk's own counter only sees
-- status > 399) and prints one machine-readable line that bench/proxy/run.sh parses.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + t:get("non2xx")
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "COUNT requests=%d rps=%.0f p99_ms=%.3f max_ms=%.3f non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.requests / secs, latency:percentile(99) / 1000, latency.max / 1000, n,
    e.connect, e.read, e.write, e.timeout))
end
