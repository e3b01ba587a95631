-- wrk script for bench/run.py: limit=100 pages from random markers, so that no page
-- is served from the page cache twice in a row. The first argument is the number of
-- images in the store (ids img-0000000 ...).
function init(args)
  count = tonumber(args[1] or "1000")
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8), 16) or 0))
end

function request()
  local marker = string.format("img-%07d", math.random(0, math.max(count - 101, 0)))
  return wrk.format(nil, "/v3/images?limit=100&marker=" .. marker)
end
