-- KEYS: meta. ARGV: max_events, max_bytes, the resume window in ms ('0':
-- keep forever). Replies: {'ok'} | {'exists'}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
redis.call('HSET', KEYS[1], 'top', 0, 'floor', 0, 'bytes', 0,
  'max_events', ARGV[1], 'max_bytes', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {'ok'}
