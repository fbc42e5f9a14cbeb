-- Fail one task that is still waiting in its queue (its model is being deleted).
-- KEYS[1] model queue, KEYS[2] task hash
-- ARGV[1] task id, ARGV[2] message, ARGV[3] error code, ARGV[4] now, ARGV[5] ttl (s)
-- Returns 1 when the task was queued and is now failed, else 0.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
local t = redis.call('HMGET', KEYS[2], 'attempt', 'reply_to')
fail(KEYS[2], ARGV[1], t[1], t[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
