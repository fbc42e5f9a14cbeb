-- Set or clear one of the autoscaler's notes on a model: why no live worker can serve it
-- ('unschedulable'), or how its starts failed on each worker ('start_failures'). A model
-- deleted in the meantime is left alone: a bare HSET would bring back a hash without its
-- fields.
-- KEYS[1] model hash
-- ARGV[1] field, ARGV[2] value ('' to clear)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
