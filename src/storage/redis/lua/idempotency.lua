-- SET NX with the existing value on conflict, in one step (a plain
-- SET NX then GET could find the key expired in between).
-- KEYS: idem. ARGV: record, ttl_ms. Replies: {'claimed'} | {'existing', record}
local existing = redis.call('GET', KEYS[1])
if existing then
  return {'existing', existing}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'claimed'}
