-- Start deleting a model: no new requests are accepted from here on.
-- KEYS[1] model hash, KEYS[2] the models' version
-- ARGV[1] now
-- Returns 1 when the model was active, 0 when it is unknown or already being deleted.
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'deleting', 'updated', ARGV[1])
models_changed(KEYS[2])
return 1
