-- wrk script of scripts/perf.sh: GET /v1/<collection>/k<i> with a key and, when a
-- session file is given, a session (X-Session-Id + X-Session-Token) per request.
--
--   wrk -t2 -c64 -d5s -s load.lua http://127.0.0.1:PORT -- KEYS [SESSIONS.lua|-] [random|seq] [collection] [threads]
--
-- KEYS      keys k1..kKEYS; `random` (default) picks one uniformly per request,
--           `seq` walks them in order, thread t of `threads` (wrk's -t) starting at
--           key (t-1)·KEYS/threads + 1: a warm-up, whose first KEYS requests (spread
--           evenly over the threads) touch every key.
-- SESSIONS  a Lua file defining `sessions = { {"<id>", "<token>"}, … }` (written by
--           sessions.py); `-` or absent: no session headers (nginx, the ceiling).
--
-- Requests are pre-built per key and per session in init(), so request() costs one
-- string concatenation for every configuration alike. done() prints one line
--   PERF_RESULT requests duration_us rps p50_us p90_us p99_us bytes errors
-- where errors = connect+read+write+timeout+status(>399).

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

local prefix, suffix, nkeys, nsess, mode, seq

function init(args)
   nkeys = tonumber(args[1] or "1")
   local file = args[2] or "-"
   mode = args[3] or "random"
   local collection = args[4] or "bench"
   math.randomseed((tid or 1) * 7919 + os.time())
   local host = wrk.host
   if wrk.port then host = host .. ":" .. wrk.port end
   prefix = {}
   for i = 1, nkeys do
      prefix[i] = "GET /v1/" .. collection .. "/k" .. i .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
   end
   suffix = {}
   if file ~= "-" then
      dofile(file)
      for i, s in ipairs(sessions) do
         suffix[i] = "X-Session-Id: " .. s[1] .. "\r\nX-Session-Token: " .. s[2] .. "\r\n\r\n"
      end
   end
   if #suffix == 0 then suffix[1] = "\r\n" end
   nsess = #suffix
   local nthreads = tonumber(args[5] or "1")
   seq = math.floor(((tid or 1) - 1) * nkeys / nthreads)
end

function request()
   local k
   if mode == "seq" then
      k = seq % nkeys + 1
      seq = seq + 1
   else
      k = math.random(nkeys)
   end
   return prefix[k] .. suffix[math.random(nsess)]
end

function done(summary, latency, requests)
   local e = summary.errors
   local errors = e.connect + e.read + e.write + e.timeout + e.status
   local secs = summary.duration / 1e6
   io.write(string.format("PERF_RESULT %d %d %.1f %d %d %d %d %d\n",
      summary.requests, summary.duration, summary.requests / secs,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      summary.bytes, errors))
end
