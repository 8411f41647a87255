-- The reaper: ends a job whose lease expired (its node is lost) with one
-- terminal, exactly once however many nodes race here.
-- KEYS: meta, log, lease, job, running. ARGV: job, body, wake channel,
-- running member, the terminal's payload (JSON, kept as the job's `term`).
-- Replies: {'alive'} | {'reaped', seq} | {'done'} | {'gone'}
local meta, log, lease, job_key, running = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job = ARGV[1]
if redis.call('EXISTS', lease) == 1 then
  return {'alive'}
end
redis.call('ZREM', running, ARGV[4])
local m = redis.call('HMGET', meta, 'top', 'floor', 'bytes', 'max_events', 'max_bytes',
  'j:' .. job, 't:' .. job)
if m[7] then
  return {'done'}
end
if redis.call('HGET', job_key, 'status') == 'running' then
  redis.call('HSET', job_key, 'status', 'lost')
end
if not m[1] then
  return {'gone'}
end
local seq = store_event(meta, log, m, job, false, true, ARGV[2], ARGV[3])
if redis.call('EXISTS', job_key) == 1 then
  redis.call('HSET', job_key, 'term', ARGV[5])
end
return {'reaped', tostring(seq)}
