-- Enqueue a task for a model that is deployed and active.
-- KEYS[1] model hash, KEYS[2] task hash, KEYS[3] model queue, KEYS[4] model instances set
-- ARGV[1] task id, ARGV[2] task ttl (s), ARGV[3..] task hash field/value pairs
-- Returns {status, queue length, instance count}; status 'ok', 'missing' or the model state.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {'missing', 0, 0}
end
if state ~= 'active' then
  return {state, 0, 0}
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[2])
local length = redis.call('RPUSH', KEYS[3], ARGV[1])
return {'ok', length, redis.call('SCARD', KEYS[4])}
