-- Enqueue a task for a model that is deployed and active.
-- KEYS[1] model hash, KEYS[2] task hash, KEYS[3] model queue, KEYS[4] model instances set
-- ARGV[1] task id, ARGV[2] task ttl (s), ARGV[3..] task hash field/value pairs
-- Returns {status, queue length, instance count, reason}; status 'ok', 'missing', 'full'
-- (the config's max_queue_length are waiting), 'unschedulable' (no live worker can serve
-- it, the reason says why) or the model state. A task already enqueued (a client retry
-- whose first reply was lost) is not queued again: 'ok' as before.
local model = redis.call('HMGET', KEYS[1], 'state', 'config', 'unschedulable')
local state = model[1]
if not state then
  return {'missing', 0, 0, ''}
end
if state ~= 'active' then
  return {state, 0, 0, ''}
end
if model[3] and model[3] ~= '' then
  return {'unschedulable', 0, 0, model[3]}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'ok', redis.call('LLEN', KEYS[3]), redis.call('SCARD', KEYS[4]), ''}
end
local limit = tonumber(cjson.decode(model[2] or '{}')['max_queue_length'])
local waiting = redis.call('LLEN', KEYS[3])
if limit and waiting >= limit then
  return {'full', waiting, redis.call('SCARD', KEYS[4]), ''}
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[2])
local length = redis.call('RPUSH', KEYS[3], ARGV[1])
return {'ok', length, redis.call('SCARD', KEYS[4]), ''}
