-- Charge one request and its tokens to a client's two token buckets, all or nothing.
-- Each bucket holds up to its per-minute limit, starts full and refills continuously at
-- limit / 60 s; a limit of 0 leaves its bucket out. A cost above a bucket's whole size
-- is charged as the whole size, so a large request waits for a full bucket and is never
-- refused forever.
-- KEYS[1] the client's bucket hash (fields req, tok, ts)
-- ARGV[1] now (ms), ARGV[2] requests per minute, ARGV[3] tokens per minute,
-- ARGV[4] tokens this request costs
-- Returns {1, 0, ''} when charged, or {0, wait_ms, 'requests' | 'tokens'}: nothing was
-- charged, and the named bucket holds enough again after wait_ms.
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local WINDOW = 60000

local saved = redis.call('HMGET', KEYS[1], 'req', 'tok', 'ts')
local ts = tonumber(saved[3]) or now
-- Clocks of several heads differ a little: time never runs backwards for a bucket.
local elapsed = math.max(0, now - ts)

local function level(stored, limit)
  if limit <= 0 then return 0 end
  local current = tonumber(stored) or limit
  return math.min(limit, current + elapsed * limit / WINDOW)
end

local req = level(saved[1], rpm)
local tok = level(saved[2], tpm)
local tok_cost = math.min(cost, tpm)

if rpm > 0 and req < 1 then
  return {0, math.ceil((1 - req) * WINDOW / rpm), 'requests'}
end
if tpm > 0 and tok < tok_cost then
  return {0, math.ceil((tok_cost - tok) * WINDOW / tpm), 'tokens'}
end

if rpm > 0 then req = req - 1 end
if tpm > 0 then tok = tok - tok_cost end
redis.call('HSET', KEYS[1], 'req', tostring(req), 'tok', tostring(tok), 'ts', tostring(math.max(now, ts)))
-- An idle client's buckets are full again after a minute: nothing left to remember.
redis.call('PEXPIRE', KEYS[1], WINDOW + 1000)
return {1, 0, ''}
