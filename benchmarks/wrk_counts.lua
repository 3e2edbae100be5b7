-- Count responses by status across wrk's threads: 200 right answers, 409 a wrong redis reply,
-- 422 a wrong PostgreSQL reply (another process's), anything else "other". Printed as one line
-- for benchmarks/_load.py.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, wrong, wrongpg, other = 0, 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 409 then
    wrong = wrong + 1
  elseif status == 422 then
    wrongpg = wrongpg + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local o, w, p, x = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    w = w + t:get("wrong")
    p = p + t:get("wrongpg")
    x = x + t:get("other")
  end
  io.write(string.format("POSTFORK_COUNTS ok=%d wrong=%d wrongpg=%d other=%d\n", o, w, p, x))
end
