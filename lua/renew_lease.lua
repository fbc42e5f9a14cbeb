-- Extend a task's lease while its owner still holds this attempt.
-- KEYS[1] task hash, KEYS[2] leases zset
-- ARGV[1] task id, ARGV[2] owner, ARGV[3] attempt, ARGV[4] new lease deadline,
-- ARGV[5] the attempt's claim (its stamp time; '' for any)
-- Returns 1 when renewed, 0 when the claim has moved on (another attempt or claim,
-- finished, cancelled).
local t = redis.call('HMGET', KEYS[1], 'state', 'owner', 'attempt', 'claimed')
if t[1] ~= 'running' or t[2] ~= ARGV[2] or t[3] ~= ARGV[3] then
  return 0
end
if ARGV[5] ~= '' and t[4] ~= ARGV[5] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', ARGV[4])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[1])
return 1
