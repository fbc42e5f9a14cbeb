-- The model set's version: a head keeps the list of models it read, and reads it again
-- only when this changed. `born` (the server's clock when the key was made) tells a
-- flushed or replaced Redis, whose counter starts again, from the one the list came from.
local function models_changed(version)
  if redis.call('HINCRBY', version, 'n', 1) == 1 then
    local now = redis.call('TIME')
    redis.call('HSET', version, 'born', now[1] .. '.' .. now[2])
  end
end

-- Tell every head's claim loop of `model` that its queue, empty until now, has a task
-- (`length` is the queue's length after the push).
local function announce_queued(length, channel, model)
  if length == 1 then
    redis.call('PUBLISH', channel, cjson.encode({type = 'queued', model = model}))
  end
end
