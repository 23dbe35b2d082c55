-- wrk script: prints one machine-readable line at the end of a run.
-- Latencies are in microseconds; non2xx counts responses outside 200-399,
-- which for the invalid-key runs is every response.
function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT rps=%.1f p50=%d p99=%d max=%d requests=%d non2xx=%d errors=%d\n",
    summary.requests / seconds, latency:percentile(50), latency:percentile(99), latency.max,
    summary.requests, summary.errors.status, errors))
end
