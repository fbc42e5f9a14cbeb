-- Add a starting instance to an active model.
-- KEYS[1] instance hash, KEYS[2] model instances set, KEYS[3] model hash, KEYS[4] every
-- instance's id
-- ARGV[1] instance id, ARGV[2] now, ARGV[3..] instance hash field/value pairs
-- Returns 1, or 0 when the model is not active.
if redis.call('HGET', KEYS[3], 'state') ~= 'active' then
  return 0
end
local fields = {'id', ARGV[1], 'state', 'starting', 'outstanding', 0, 'created', ARGV[2],
  'updated', ARGV[2]}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
