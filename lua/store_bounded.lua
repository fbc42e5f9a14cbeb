-- Store a value in a bounded store (stored responses, a model's response cache): its key
-- expires after the TTL, the index (by time) forgets what expired, and past the count
-- bound the oldest are deleted.
-- KEYS[1] the value's key, KEYS[2] the index
-- ARGV[1] id, ARGV[2] value, ARGV[3] TTL seconds, ARGV[4] now, ARGV[5] most values kept,
-- ARGV[6] the key prefix of a value (prefix .. id is its key)
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[3]))
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, id in ipairs(old) do redis.call('DEL', ARGV[6] .. id) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return over
