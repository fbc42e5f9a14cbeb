-- A claim ended without an outcome (lease expired, worker unreachable): the task goes back
-- to the front of its queue, or fails once its attempts are spent or its model is gone.
-- KEYS[1] task hash, KEYS[2] leases zset, KEYS[3] processing list, KEYS[4] model queue,
-- KEYS[5] instance hash, KEYS[6] instance tasks set, KEYS[7] model hash
-- ARGV[1] task id, ARGV[2] attempt expected, ARGV[3] now, ARGV[4] reason, ARGV[5] ttl (s),
-- ARGV[6] 'unsent' when the call never reached a worker (its connection was refused): that
-- attempt does not count against max_attempts; ARGV[7] the control channel, ARGV[8] the
-- model's name. Bounded: the caller marks the unreachable
-- instance failed, so no head sends the task there again, and the deadline ends it anyway.
-- Returns 'requeued', 'failed', 'cancelled' (released, client gone) or 'stale'.
local t = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'max_attempts', 'reply_to')
if t[2] ~= ARGV[2] then
  return 'stale'
end
if t[1] == 'cancelled' then
  -- Without a lease the task already ended (cancelled in the queue, or released by an
  -- earlier requeue): a late caller of that attempt is stale, with nothing to release.
  if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return 'stale'
  end
  release(ARGV[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6], ARGV[3])
  end_cancelled(KEYS[1], ARGV[1], t[2], ARGV[3], ARGV[5])
  return 'cancelled'
end
if t[1] ~= 'running' then
  return 'stale'
end
release(ARGV[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6], ARGV[3])
if redis.call('HGET', KEYS[7], 'state') ~= 'active' then
  fail(KEYS[1], ARGV[1], t[2], t[4], 'the model was deleted', 'model_deleted', ARGV[3], ARGV[5])
  return 'failed'
end
if ARGV[6] == 'unsent' then
  t[3] = redis.call('HINCRBY', KEYS[1], 'max_attempts', 1)
end
if tonumber(t[2]) >= tonumber(t[3]) then
  fail(KEYS[1], ARGV[1], t[2], t[4], 'request failed after ' .. t[2] .. ' attempt(s): ' .. ARGV[4],
    'attempts_exhausted', ARGV[3], ARGV[5])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'owner', '', 'instance', '', 'lease', '')
announce_queued(redis.call('LPUSH', KEYS[4], ARGV[1]), ARGV[7], ARGV[8])
return 'requeued'
