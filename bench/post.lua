-- wrk script for bench/run.py: every request creates a new image. Ids are unique per
-- run (the first script argument) and per wrk thread.
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = (args[1] or "run") .. "-" .. tid .. "-"
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = '{"id":"' .. prefix .. counter ..
    '","provider":"ec2","remote_user":"ubuntu","name":"bench image"}'
  return wrk.format(nil, "/v3/image", nil, body)
end
