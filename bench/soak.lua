-- wrk script for bench/soak.py: POST /v1/events at a steady pace, each
-- connection waiting a fixed delay between requests, a unique Idempotency-Key
-- per request, ordering keys drawn from a fixed number of keys.
--
--   wrk -t1 -c16 -d60s --latency -s bench/soak.lua URL -- <prefix> <token> <keys> <delay_ms>
--
-- done() prints one line "BENCH_JSON {...}" that bench/soak.py parses.

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   prefix = args[1] or "soak"
   token = args[2] or ""
   keys = tonumber(args[3] or "100000")
   pause = tonumber(args[4] or "10")
   counter = 0
   non2xx = 0
   math.randomseed(tid * 7919 + os.time())
   headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
   }
end

function delay()
   return pause
end

function request()
   counter = counter + 1
   headers["Idempotency-Key"] = string.format("%s-%d-%d", prefix, tid, counter)
   local body = string.format(
      '{"type":"order.created","key":"customer-%d","data":{"order_id":"ord_%d_%d",' ..
      '"total":%d.%02d,"currency":"EUR","items":[{"sku":"SKU-%d","qty":%d}],' ..
      '"note":"%s"}}',
      math.random(1, keys), tid, counter, math.random(1, 999), math.random(0, 99),
      math.random(1, 300), math.random(1, 5), string.rep("x", 200))
   return wrk.format("POST", "/v1/events", headers, body)
end

function response(status, hdrs, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("non2xx")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"non2xx":%d,"errors":%d,' ..
      '"p50_us":%d,"p99_us":%d}\n',
      summary.duration, summary.requests, bad,
      e.connect + e.read + e.write + e.status + e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
