-- Enqueue a task for a model that is deployed and active. With an offer (a head whose
-- dispatcher has a ready instance with room) and nobody waiting in the queue, the task goes
-- straight to that head instead: claimed and stamped as a BLMOVE and stamp_lease.lua would,
-- in this one round trip. A waiting queue is served first, in order.
-- KEYS[1] model hash, KEYS[2] task hash, KEYS[3] model queue, KEYS[4] model instances set,
-- KEYS[5] the set of models with queued or claimed tasks; with an offer also KEYS[6]
-- processing list, KEYS[7] leases zset, KEYS[8] instance hash, KEYS[9] instance tasks set
-- ARGV[1] task id, ARGV[2] task ttl (s), ARGV[3] offering owner ('' for no offer),
-- ARGV[4] offered instance id, ARGV[5] its max concurrency, ARGV[6] now,
-- ARGV[7] lease deadline, ARGV[8] the instance hashes' key prefix, ARGV[9] the control
-- channel, ARGV[10] the model's name, ARGV[11..] task hash field/value pairs
-- A task queued on an empty queue is announced on the control channel ('queued'): claim
-- loops wait for that rather than each holding a blocking command on a connection.
-- Returns {status, queue length, instance count, reason, attempt}; status 'ok', 'missing',
-- 'full' (the config's max_queue_length are waiting), 'unschedulable' (no live worker can
-- serve it, the reason says why) or the model state; attempt 1 when the offer was taken, else
-- 0. A task already enqueued (a client retry whose first reply was lost) is not queued
-- again: 'ok' as before. A queued task's instance count leaves out sleeping instances: a
-- model with none awake needs the autoscaler at once, to wake one.
local model = redis.call('HMGET', KEYS[1], 'state', 'config', 'unschedulable')
local state = model[1]
if not state then
  return {'missing', 0, 0, '', 0}
end
if state ~= 'active' then
  return {state, 0, 0, '', 0}
end
if model[3] and model[3] ~= '' then
  return {'unschedulable', 0, 0, model[3], 0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'ok', redis.call('LLEN', KEYS[3]), redis.call('SCARD', KEYS[4]), '', 0}
end
local limit = tonumber(cjson.decode(model[2] or '{}')['max_queue_length'])
local waiting = redis.call('LLEN', KEYS[3])
if limit and waiting >= limit then
  return {'full', waiting, redis.call('SCARD', KEYS[4]), '', 0}
end
local fields = {}
for i = 11, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[10])
if ARGV[3] ~= '' and waiting == 0 then
  local instance = redis.call('HMGET', KEYS[8], 'state', 'outstanding')
  if instance[1] == 'ready' and (tonumber(instance[2]) or 0) < tonumber(ARGV[5]) then
    redis.call('RPUSH', KEYS[6], ARGV[1])
    local attempt = stamp(KEYS[2], ARGV[1], KEYS[7], KEYS[8], KEYS[9], ARGV[3], ARGV[6],
      ARGV[7], ARGV[4])
    return {'ok', 0, redis.call('SCARD', KEYS[4]), '', attempt}
  end
end
local length = redis.call('RPUSH', KEYS[3], ARGV[1])
announce_queued(length, ARGV[9], ARGV[10])
local awake = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if redis.call('HGET', ARGV[8] .. id, 'state') ~= 'sleeping' then
    awake = awake + 1
  end
end
return {'ok', length, awake, '', 0}
