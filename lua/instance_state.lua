-- Compare-and-set an instance's state. Draining and sleeping also require that the
-- instance serves nothing, so the scaler can never stop or put to sleep a busy instance
-- (stamp_lease only uses 'ready').
-- KEYS[1] instance hash
-- ARGV[1] new state, ARGV[2] now, ARGV[3] reason, ARGV[4..] states it may move from
-- Returns the instance's model when changed, 0 otherwise.
local cur = redis.call('HMGET', KEYS[1], 'state', 'outstanding', 'model')
if not cur[1] then
  return 0
end
local allowed = false
for i = 4, #ARGV do
  if ARGV[i] == cur[1] then
    allowed = true
  end
end
if not allowed then
  return 0
end
if (ARGV[1] == 'draining' or ARGV[1] == 'sleeping') and tonumber(cur[2] or '0') > 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'state_reason', ARGV[3], 'updated', ARGV[2])
if ARGV[1] == 'ready' then
  redis.call('HSET', KEYS[1], 'ready_at', ARGV[2])
end
return cur[3] or ''
