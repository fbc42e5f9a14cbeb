-- The models with queued or claimed tasks, and their queue and processing lengths; a model
-- with neither leaves the set (enqueue.lua puts it back with its next task).
-- KEYS[1] the set of models with queued or claimed tasks
-- ARGV[1] the queues' key prefix, ARGV[2] the processing lists' key prefix
-- Returns {model, queue length, processing length, ...}.
local out = {}
for _, model in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local queued = redis.call('LLEN', ARGV[1] .. model)
  local claimed = redis.call('LLEN', ARGV[2] .. model)
  if queued == 0 and claimed == 0 then
    redis.call('SREM', KEYS[1], model)
  else
    out[#out + 1] = model
    out[#out + 1] = queued
    out[#out + 1] = claimed
  end
end
return out
