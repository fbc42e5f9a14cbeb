-- Forget an instance. Its running tasks must have been requeued first; any left are
-- returned so the caller can requeue them.
-- KEYS[1] instance hash, KEYS[2] model instances set, KEYS[3] instance tasks set, KEYS[4]
-- every instance's id
-- ARGV[1] instance id
-- Returns the ids of tasks still recorded as running on it.
local tasks = redis.call('SMEMBERS', KEYS[3])
if #tasks == 0 then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
end
return tasks
