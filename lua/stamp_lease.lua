-- Stamp the lease of a task a dispatcher has just moved (BLMOVE) into the processing list.
-- KEYS[1] task hash, KEYS[2] leases zset, KEYS[3] processing list, KEYS[4] instance hash,
-- KEYS[5] instance tasks set, KEYS[6] model queue
-- ARGV[1] task id, ARGV[2] owner, ARGV[3] now, ARGV[4] lease deadline, ARGV[5] instance id,
-- ARGV[6] the control channel, ARGV[7] the model's name
-- Returns {status, attempt, ...}: 'ok' followed by the task's endpoint, body, reply_to,
-- deadline, stream and request_id (what the dispatcher needs, without another round trip);
-- 'gone' (task expired, cancelled or taken back by the
-- reaper: dropped);
-- 'instance' (the instance is no longer ready: the task goes back to the queue front,
-- announced as any push onto an empty queue).
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' then
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  return {'gone', 0}
end
-- The reaper sends a claim left unstamped for a lease back to the queue (recover_claim): a
-- dispatcher that stalled that long no longer holds it, and stamping (or pushing it back)
-- would leave the task in the queue twice, or running while still queued.
if not redis.call('LPOS', KEYS[3], ARGV[1]) then
  return {'gone', 0}
end
if redis.call('HGET', KEYS[4], 'state') ~= 'ready' then
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  announce_queued(redis.call('LPUSH', KEYS[6], ARGV[1]), ARGV[6], ARGV[7])
  return {'instance', 0}
end
local attempt = stamp(KEYS[1], ARGV[1], KEYS[2], KEYS[4], KEYS[5], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5])
local f = redis.call('HMGET', KEYS[1], 'endpoint', 'body', 'reply_to', 'deadline', 'stream',
  'request_id')
return {'ok', attempt, f[1] or '', f[2] or '{}', f[3] or '', f[4] or '0', f[5] or '0',
  f[6] or ''}
