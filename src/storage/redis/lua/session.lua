-- Session scripts share one entry point so one SHA serves them all.
-- KEYS: sess. ARGV[1]: operation, then its arguments.
-- create  rec                -> {'ok', '1'} | {'exists'}
-- resume  presented          -> {'ok', generation} | {'gone'} | {'superseded'}
-- attach  presented, holder  -> {'ok', generation, previous holder or ''}
--                               | {'gone'} | {'closed'} | {'superseded'}
-- detach  holder             -> {'ok', '1' or '0'} | {'gone'}
-- close                      -> {'ok'} | {'gone'}
-- A presented generation is consumed (older ones stop working), then the
-- next one is issued: consume-then-issue in one step.
local sess, op = KEYS[1], ARGV[1]
if op == 'create' then
  if redis.call('EXISTS', sess) == 1 then
    return {'exists'}
  end
  redis.call('HSET', sess, 'rec', ARGV[2], 'issued', 1, 'used', 0, 'closed', 0)
  return {'ok', '1'}
end
local s = redis.call('HMGET', sess, 'issued', 'used', 'closed', 'holder')
if not s[1] then
  return {'gone'}
end
if op == 'detach' then
  if s[4] == ARGV[2] then
    redis.call('HDEL', sess, 'holder')
    return {'ok', '1'}
  end
  return {'ok', '0'}
end
if op == 'close' then
  redis.call('HSET', sess, 'closed', 1)
  return {'ok'}
end
local issued, used = tonumber(s[1]), tonumber(s[2])
if op == 'attach' and s[3] == '1' then
  return {'closed'}
end
if ARGV[2] ~= '' then
  local presented = tonumber(ARGV[2])
  if presented < used or presented > issued then
    return {'superseded'}
  end
  used = presented
end
issued = issued + 1
if op == 'attach' then
  redis.call('HSET', sess, 'issued', issued, 'used', used, 'holder', ARGV[3])
  return {'ok', tostring(issued), s[4] or ''}
end
redis.call('HSET', sess, 'issued', issued, 'used', used, 'closed', 0)
return {'ok', tostring(issued)}
