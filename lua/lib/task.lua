-- Shared by every script that stamps, ends or releases a task; the loader puts it before
-- each script's own body, so the helpers below are local functions of that script.

-- Stamp the lease of a task that sits in its model's processing list: its next attempt is
-- `owner`'s, on `instance_id`, until `lease_until`. Returns the attempt number.
local function stamp(task, id, leases, instance, instance_tasks, owner, now, lease_until,
                     instance_id)
  local attempt = redis.call('HINCRBY', task, 'attempt', 1)
  redis.call('HSET', task, 'state', 'running', 'owner', owner, 'instance', instance_id,
    'lease', lease_until, 'claimed', now)
  redis.call('ZADD', leases, lease_until, id)
  redis.call('HINCRBY', instance, 'outstanding', 1)
  redis.call('SADD', instance_tasks, id)
  return attempt
end

-- Release a task's claim: lease, processing entry, and its slot on the instance.
local function release(id, leases, processing, instance, instance_tasks, now)
  redis.call('ZREM', leases, id)
  redis.call('LREM', processing, 1, id)
  if redis.call('SREM', instance_tasks, id) == 1 and redis.call('EXISTS', instance) == 1 then
    redis.call('HINCRBY', instance, 'outstanding', -1)
    redis.call('HSET', instance, 'last_finished', now)
  end
end

-- An ended task keeps its outcome for its TTL, not its request: the body (up to the
-- head's 8 MiB limit) is needed only while the task may still run.
local function forget_request(task)
  redis.call('HDEL', task, 'body')
end

-- A terminal error message, as the gateway reads it.
local function error_message(id, attempt, message, code)
  return cjson.encode({task = id, attempt = tonumber(attempt) or 0, seq = -1, kind = 'error',
    data = {error = {message = message, type = cjson.null, param = cjson.null, code = code}}})
end

-- End a task the client cancelled: whichever path releases its claim (the worker's
-- finish, a requeue, the reaper), it is stored with the same outcome.
local function end_cancelled(task, id, attempt, now, ttl)
  redis.call('HSET', task, 'result',
    error_message(id, attempt, 'the client cancelled the request', 'cancelled'), 'finished', now)
  forget_request(task)
  redis.call('EXPIRE', task, ttl)
end

-- Store a terminal error message and publish it to the task's reply channel.
local function fail(task, id, attempt, reply_to, message, code, now, ttl)
  local msg = error_message(id, attempt, message, code)
  redis.call('HSET', task, 'state', 'failed', 'result', msg, 'finished', now)
  forget_request(task)
  redis.call('EXPIRE', task, ttl)
  if reply_to then
    redis.call('PUBLISH', reply_to, msg)
  end
end
