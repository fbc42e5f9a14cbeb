-- Remove a model being deleted once its last instance is gone.
-- KEYS[1] model hash, KEYS[2] models set, KEYS[3] model instances set, KEYS[4] queue,
-- KEYS[5] processing list, KEYS[6] the models' version
-- ARGV[1] name
-- Returns 1 when removed, 0 when instances remain or the model is not being deleted.
if redis.call('HGET', KEYS[1], 'state') ~= 'deleting' then
  return 0
end
if redis.call('SCARD', KEYS[3]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[2], ARGV[1])
models_changed(KEYS[6])
return 1
