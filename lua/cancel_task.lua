-- The client went away: a queued task is dropped, a running one is marked cancelled (its
-- attempt still ends through finish_task or requeue_task, which release the claim).
-- KEYS[1] task hash, KEYS[2] model queue, KEYS[3] processing list
-- ARGV[1] task id, ARGV[2] now, ARGV[3] ttl (s)
-- Returns the state the task was in, or false when it no longer exists.
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
  -- Claimed but not yet stamped: the reaper only recovers queued claims, so a cancelled
  -- one whose dispatcher died would sit in the processing list until its hash expired.
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', ARGV[2])
  forget_request(KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
end
return state
