-- Record a worker's heartbeat, registering it on the first one; a heartbeat clears a
-- suspicion (suspect_worker.lua): the worker is trusted again.
-- KEYS[1] workers set, KEYS[2] worker hash
-- ARGV[1] node id, ARGV[2] now, ARGV[3..] worker hash field/value pairs
-- Returns {seen, drain}: seen 1 when the worker is new, 2 when it was suspected, 0 when
-- it was known; drain 1 when it was asked to drain (drain_worker.lua), else 0.
local new = redis.call('SADD', KEYS[1], ARGV[1])
local fields = {'node_id', ARGV[1], 'last_heartbeat', ARGV[2]}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
if new == 1 then
  fields[#fields + 1] = 'registered'
  fields[#fields + 1] = ARGV[2]
end
local suspected = redis.call('HDEL', KEYS[2], 'suspect', 'suspect_since')
redis.call('HSET', KEYS[2], unpack(fields))
local drain = redis.call('HEXISTS', KEYS[2], 'drain')
if new == 1 then
  return {1, drain}
end
if suspected > 0 then
  return {2, drain}
end
return {0, drain}
