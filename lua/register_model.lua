-- Deploy a model, or update one that is deployed. An update clears the starts that failed
-- on each worker: the new config may start where the old one could not.
-- KEYS[1] model hash, KEYS[2] models set, KEYS[3] the models' version
-- ARGV[1] name, ARGV[2] config (JSON), ARGV[3] now, ARGV[4] 'create' or 'update'
-- Returns 'ok', 'exists' (create of a deployed model), 'missing' (update of an unknown one)
-- or 'deleting' (the model is being deleted).
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'deleting' then
  return 'deleting'
end
if ARGV[4] == 'create' then
  if state then
    return 'exists'
  end
  redis.call('HSET', KEYS[1], 'name', ARGV[1], 'config', ARGV[2], 'state', 'active',
    'created', ARGV[3], 'updated', ARGV[3])
  redis.call('SADD', KEYS[2], ARGV[1])
  models_changed(KEYS[3])
  return 'ok'
end
if not state then
  return 'missing'
end
redis.call('HSET', KEYS[1], 'config', ARGV[2], 'updated', ARGV[3])
redis.call('HDEL', KEYS[1], 'start_failures')
models_changed(KEYS[3])
return 'ok'
