-- Count responses by status across wrk's threads: 200 right answer, 409 wrong answer
-- (another process's reply), anything else "other". Printed as one line for benchmarks/_load.py.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, wrong, other = 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 409 then
    wrong = wrong + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local o, w, x = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    w = w + t:get("wrong")
    x = x + t:get("other")
  end
  io.write(string.format("POSTFORK_COUNTS ok=%d wrong=%d other=%d\n", o, w, x))
end
