-- wrk script for bench/ingest.py: POST /v1/events with a small, realistic
-- event and a unique Idempotency-Key per request (run prefix, wrk thread,
-- counter), counting every answer that is not 2xx.
--
--   wrk -t2 -c64 -d10s --latency -s bench/ingest.lua http://127.0.0.1:8000 -- <prefix> <token>
--
-- done() prints one line "BENCH_JSON {...}" that bench/ingest.py parses.

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   prefix = args[1] or "run"
   token = args[2] or ""
   counter = 0
   non2xx = 0
   first_bad_status = 0
   first_bad_body = ""
   math.randomseed(tid * 7919 + os.time())
   headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
   }
end

local types = {"order.created", "order.paid", "order.shipped", "customer.updated"}

function request()
   counter = counter + 1
   local customer = math.random(1, 5000)
   headers["Idempotency-Key"] = string.format("%s-%d-%d", prefix, tid, counter)
   local body = string.format(
      '{"type":"%s","key":"customer-%d","data":{"order_id":"ord_%d_%d",' ..
      '"total":%d.%02d,"currency":"EUR","items":[{"sku":"SKU-%d","qty":%d},' ..
      '{"sku":"SKU-%d","qty":1}],"customer":{"id":%d,"tier":"gold"}},' ..
      '"occurred_at":"2026-11-26T10:00:00Z"}',
      types[counter % #types + 1], customer, tid, counter,
      math.random(1, 999), math.random(0, 99), math.random(1, 300), math.random(1, 5),
      math.random(1, 300), customer)
   return wrk.format("POST", "/v1/events", headers, body)
end

function response(status, hdrs, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_bad_status == 0 then
         first_bad_status = status
         first_bad_body = string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local bad, bad_status, bad_body = 0, 0, ""
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("non2xx")
      if bad_status == 0 and thread:get("first_bad_status") ~= 0 then
         bad_status = thread:get("first_bad_status")
         bad_body = thread:get("first_bad_body")
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"non2xx":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
      '"first_bad_status":%d,"first_bad_body":%s}\n',
      summary.duration, summary.requests, summary.bytes, bad,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9),
      bad_status, json_string(bad_body)))
end
