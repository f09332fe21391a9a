-- wrk script: POST pre-signed, unique Wildix bodies (one "signature body" pair per line of the
-- file given as the first script argument). Thread t takes lines t, t+n, t+2n... so no two
-- threads send the same body. Optional third argument: the interval in ms between requests of
-- one thread for a fixed-rate run (open loop: requests leave on schedule whatever the latency,
-- as long as a connection is free). Fourth: how many lines earlier runs already used.
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clk_id, timespec *tp);
]]
local ts = ffi.new("timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads, counter = {}, 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  pause = tonumber(args[3] or "0")
  sigs, bodies, wrapped = {}, {}, 0
  idx = math.floor(tonumber(args[4] or "0") / nthreads) -- skip bodies earlier runs sent
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == tid then
      local sp = line:find(" ", 1, true)
      sigs[#sigs + 1] = line:sub(1, sp - 1)
      bodies[#bodies + 1] = line:sub(sp + 1)
    end
    n = n + 1
  end
end

function request()
  idx = idx + 1
  if idx > #bodies then idx, wrapped = 1, wrapped + 1 end -- after a wrap: duplicates
  return wrk.format("POST", wrk.path,
    {["content-type"] = "application/json", ["x-signature"] = sigs[idx]}, bodies[idx])
end

local next_at = nil
function delay()
  if pause <= 0 then return 0 end
  local now = now_ms()
  next_at = (next_at and math.max(next_at + pause, now - 1000)) or now
  return math.max(0, next_at - now)
end

function done(summary, latency, requests)
  local wraps = 0
  for _, t in ipairs(threads) do wraps = wraps + (t:get("wrapped") or 0) end
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d timeouts=%d connect=%d read=%d write=%d " ..
    "p50=%d p90=%d p99=%d p999=%d max=%d wrapped=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.timeout,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, wraps))
end
