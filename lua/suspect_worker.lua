-- Suspect a registered worker of being dead (it refused a connection, or missed probes):
-- no instance is placed on it and its instances are replaced, until a heartbeat of its
-- own clears the suspicion (register_worker.lua).
-- KEYS[1] worker hash
-- ARGV[1] now, ARGV[2] reason
-- Returns 1 when the worker is newly suspected, 0 when it was already, or is unknown.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'suspect') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'suspect', ARGV[2], 'suspect_since', ARGV[1])
return 1
