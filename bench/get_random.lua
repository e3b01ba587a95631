-- wrk script for bench/run.py: GET /v3/image/{id} of random ids, so that reads reach
-- all of the store rather than one hot record. The first argument is the number of
-- images in the store (ids img-0000000 ...).
function init(args)
  count = tonumber(args[1] or "1000")
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8), 16) or 0))
end

function request()
  return wrk.format(nil, string.format("/v3/image/img-%07d", math.random(0, count - 1)))
end
