-- Shared by every script that ends or releases a task; the loader puts it before each
-- script's own body, so the helpers below are local functions of that script.

-- Release a task's claim: lease, processing entry, and its slot on the instance.
local function release(id, leases, processing, instance, instance_tasks, now)
  redis.call('ZREM', leases, id)
  redis.call('LREM', processing, 1, id)
  if redis.call('SREM', instance_tasks, id) == 1 and redis.call('EXISTS', instance) == 1 then
    redis.call('HINCRBY', instance, 'outstanding', -1)
    redis.call('HSET', instance, 'last_finished', now)
  end
end

-- Store a terminal error message and publish it to the task's reply channel.
local function fail(task, id, attempt, reply_to, message, code, now, ttl)
  local msg = cjson.encode({task = id, attempt = tonumber(attempt) or 0, seq = -1, kind = 'error',
    data = {error = {message = message, type = cjson.null, param = cjson.null, code = code}}})
  redis.call('HSET', task, 'state', 'failed', 'result', msg, 'finished', now)
  redis.call('EXPIRE', task, ttl)
  if reply_to then
    redis.call('PUBLISH', reply_to, msg)
  end
end
