-- wrk script of scripts/perf.sh (memory): every request opens a new live session.
--
--   wrk -t2 -c16 -d30s -s sessions-new.lua http://127.0.0.1:PORT -- PER_THREAD [collection]
--
-- Thread t sends GET /v1/<collection>/k1 with X-Session-Id m<t>x<n>, n = 1, 2, …,
-- PER_THREAD (each id new, so each request makes the node create one session), then
-- stops itself. done() prints "PERF_SESSIONS <requests> <errors>".

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
end

local quota, n, head

function init(args)
   quota = tonumber(args[1] or "50000")
   local collection = args[2] or "bench"
   local host = wrk.host
   if wrk.port then host = host .. ":" .. wrk.port end
   head = "GET /v1/" .. collection .. "/k1 HTTP/1.1\r\nHost: " .. host .. "\r\nX-Session-Id: m" .. (tid or 1) .. "x"
   n = 0
end

function request()
   n = n + 1
   if n > quota then
      -- All sent: stop (wrk itself runs until -d or SIGINT); requests still made
      -- before the loop stops reuse the last id.
      if n == quota + 1 then wrk.thread:stop() end
      return head .. quota .. "\r\n\r\n"
   end
   return head .. n .. "\r\n\r\n"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("PERF_SESSIONS %d %d\n", summary.requests,
      e.connect + e.read + e.write + e.timeout + e.status))
end
