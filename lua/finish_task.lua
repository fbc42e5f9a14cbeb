-- End a task's attempt with its terminal outcome: stored and published in one step, so a
-- subscriber that missed the message finds it in the hash.
-- KEYS[1] task hash, KEYS[2] leases zset, KEYS[3] processing list, KEYS[4] instance hash,
-- KEYS[5] instance tasks set
-- ARGV[1] task id, ARGV[2] attempt, ARGV[3] state ('done' or 'failed'),
-- ARGV[4] terminal message (JSON), ARGV[5] now, ARGV[6] ttl (s), ARGV[7] the attempt's
-- claim (its stamp time; '' for any), ARGV[8] '0': not published (the worker hands the
-- message to its client's head itself; absent: published)
-- Returns 1, or 0 when this attempt is stale or already ended (nothing changes).
local t = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'reply_to', 'claimed')
if t[2] ~= ARGV[2] or (t[1] ~= 'running' and t[1] ~= 'cancelled') then
  return 0
end
-- The same attempt number stamped again (a Redis failover lost the first stamp): only
-- the claim Redis holds may finish it.
if ARGV[7] ~= '' and t[4] ~= ARGV[7] then
  return 0
end
-- 'cancelled' is live only while the claim holds its lease (cancelled while running). A task
-- requeued and then cancelled in the queue keeps that attempt number, and its late finish
-- must not overwrite the ended task or publish into it.
if t[1] == 'cancelled' and not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
release(ARGV[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[5])
if t[1] == 'cancelled' then
  -- Nobody reads the output of a cancelled task; it ends like every cancelled task.
  end_cancelled(KEYS[1], ARGV[1], t[2], ARGV[5], ARGV[6])
  return 1
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'result', ARGV[4], 'finished', ARGV[5])
forget_request(KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if t[3] and ARGV[8] ~= '0' then
  redis.call('PUBLISH', t[3], ARGV[4])
end
return 1
