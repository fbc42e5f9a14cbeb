-- Record a worker's heartbeat, registering it on the first one.
-- KEYS[1] workers set, KEYS[2] worker hash
-- ARGV[1] node id, ARGV[2] now, ARGV[3..] worker hash field/value pairs
-- Returns 1 when the worker is new, 0 when it was known.
local new = redis.call('SADD', KEYS[1], ARGV[1])
local fields = {'node_id', ARGV[1], 'last_heartbeat', ARGV[2]}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
if new == 1 then
  fields[#fields + 1] = 'registered'
  fields[#fields + 1] = ARGV[2]
end
redis.call('HSET', KEYS[2], unpack(fields))
return new
