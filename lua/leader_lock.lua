-- Acquire or renew a leader lock, so only one head acts on a decision.
-- KEYS[1] lock
-- ARGV[1] owner, ARGV[2] ttl (ms)
-- Returns 1 when the caller holds the lock, 0 when another owner does.
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
