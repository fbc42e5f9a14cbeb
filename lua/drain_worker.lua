-- Ask a registered worker to drain (ARGV[1] '1': no new instance goes there, its
-- instances are retired once their tasks end) or to take work again (ARGV[1] '0'). The
-- flag outlives heartbeats (register_worker.lua keeps other fields) until undone.
-- KEYS[1] worker hash
-- ARGV[1] '1' or '0'
-- Returns 1, or 0 when the worker is unknown (nothing is written: a hash of only this
-- field would read as a worker).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'drain', '1')
else
  redis.call('HDEL', KEYS[1], 'drain')
end
return 1
