-- Note why no live worker can serve a model ('' clears the note). A model deleted in
-- the meantime is left alone: a bare HSET would bring back a hash without its fields.
-- KEYS[1] model hash
-- ARGV[1] reason ('' to clear)
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'unschedulable')
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'unschedulable', ARGV[1])
end
return 1
