-- A task moved into the processing list whose lease was never stamped (its dispatcher died
-- between BLMOVE and stamp_lease) goes back to the queue front.
-- KEYS[1] task hash, KEYS[2] processing list, KEYS[3] model queue
-- ARGV[1] task id, ARGV[2] the control channel, ARGV[3] the model's name
-- Returns 1 when recovered, 0 otherwise (an expired task is just dropped).
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 1 then
    announce_queued(redis.call('LPUSH', KEYS[3], ARGV[1]), ARGV[2], ARGV[3])
    return 1
  end
elseif not state then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
end
return 0
