-- wrk script for the signing load of bench/isolation.py: the request of jws_post.lua (POST a BODY_BYTES body
-- with `Metadata: true`), and every answer counted by its status, since a full crypto queue answers 503 and
-- wrk alone only counts "not 2xx/3xx". Prints report.lua's JSON line and a second one, {"statuses": {...}}.
dofile(os.getenv("POST_LUA"))
local report = done
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  io.write('{"statuses":{' .. table.concat(parts, ",") .. '}}\n')
  report(summary, latency, requests)
end
