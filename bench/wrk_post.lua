-- wrk script for `make bench`: POSTs one JSON body, rotating through session tokens,
-- and writes the figures as JSON to $BENCH_OUT when done.
-- Environment: BENCH_PATH, BENCH_BODY_FILE, BENCH_TOKENS_FILE (one token a line, may be
-- empty: no Authorization header), BENCH_OUT.

local requests = {}
local index = 0

local function read_file(path)
  local handle = assert(io.open(path, "rb"))
  local text = handle:read("*a")
  handle:close()
  return text
end

function init(args)
  local path = os.getenv("BENCH_PATH")
  local body = read_file(os.getenv("BENCH_BODY_FILE"))
  local tokens_file = os.getenv("BENCH_TOKENS_FILE")
  local headers = { ["Content-Type"] = "application/json" }
  if tokens_file and tokens_file ~= "" then
    for token in io.lines(tokens_file) do
      if token ~= "" then
        headers["Authorization"] = "Bearer " .. token
        requests[#requests + 1] = wrk.format("POST", path, headers, body)
      end
    end
  end
  if #requests == 0 then
    requests[1] = wrk.format("POST", path, headers, body)
  end
  -- Start each thread at a different token.
  index = math.random(#requests)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, _)
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
  out:close()
end
