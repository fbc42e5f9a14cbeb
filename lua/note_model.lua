-- Set or clear one of the autoscaler's notes on a model: why no live worker can serve it
-- ('unschedulable'), or how its starts failed on each worker ('start_failures'). A model
-- deleted in the meantime is left alone: a bare HSET would bring back a hash without its
-- fields.
-- KEYS[1] model hash, KEYS[2] the models' version
-- ARGV[1] field, ARGV[2] value ('' to clear)
local changed
if ARGV[2] == '' then
  changed = redis.call('HDEL', KEYS[1], ARGV[1]) == 1
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  changed = redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if changed then
  models_changed(KEYS[2])
end
return 1
