-- Note how far the client of a streamed task has read (flow control): the worker
-- publishing its chunks waits when it runs a window ahead of this.
-- KEYS[1] task hash
-- ARGV[1] attempt, ARGV[2] chunks read
-- Returns 1 when noted; 0 when the task is gone (no hash is made for it).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'acked', ARGV[1] .. ':' .. ARGV[2])
return 1
