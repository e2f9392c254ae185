-- wrk script of `python -m bench webhooks`: POST MX-shaped CONNECTION_STATUS webhooks to
-- /mx/webhooks with HTTP Basic auth, every body distinct (a new member guid per request, so
-- each one is a new inbox row, not a duplicate). Arguments (after `--`): the Authorization
-- header value, a guid prefix. Prints one JSON line at the end (after "WRK_JSON ").

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  auth = args[1]
  prefix = args[2] or "MBR-W"
  counter = 0
end

function request()
  counter = counter + 1
  local guid = string.format("%s-%d-%08d", prefix, tid, counter)
  local body = '{"action":"CHANGED","connection_status":"DENIED","connection_status_id":2,'
    .. '"connection_status_message":"bench","member_guid":"' .. guid
    .. '","type":"CONNECTION_STATUS","user_guid":"USR-bench"}'
  return wrk.format("POST", "/mx/webhooks",
    {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"connect_errors":%d,'
    .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
