-- One append, atomic: fence check, dedup by the job's append index, seq
-- allocation, XADD with the seq as explicit ID, retention, wake-up.
-- KEYS: meta, log, lease. ARGV: job, index, terminal (1/0), body, fence
-- ('' for none), wake channel.
-- Replies: {'ok', seq} | {'dup', seq or ''} | {'closed', terminal seq}
--        | {'gone'} | {'fenced'}
local meta, log, lease = KEYS[1], KEYS[2], KEYS[3]
local job, index, fence = ARGV[1], tonumber(ARGV[2]), ARGV[5]
if fence ~= '' and redis.call('GET', lease) ~= fence then
  return {'fenced'}
end
local m = redis.call('HMGET', meta, 'top', 'floor', 'bytes', 'max_events', 'max_bytes',
  'j:' .. job, 't:' .. job)
if not m[1] then
  return {'gone'}
end
if m[6] then
  local last, last_seq = string.match(m[6], '^(%d+):(%d+)$')
  if index <= tonumber(last) then
    if index == tonumber(last) then
      return {'dup', last_seq}
    end
    return {'dup', ''}
  end
end
if m[7] then
  return {'closed', m[7]}
end
local seq = store_event(meta, log, m, job, index, ARGV[3] == '1', ARGV[4], ARGV[6])
return {'ok', tostring(seq)}
