-- Acknowledged events (§6.5): raise the floor to min(up_to, top), trim.
-- KEYS: meta, log. ARGV: up_to. Replies: {'ok', floor, top} | {'gone'}
local meta, log = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'top', 'floor', 'bytes')
if not m[1] then
  return {'gone'}
end
local top, floor, bytes = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local up_to = math.min(tonumber(ARGV[1]), top)
if up_to > floor then
  local entries = redis.call('XRANGE', log, (floor + 1) .. '-0', up_to .. '-0')
  for _, entry in ipairs(entries) do
    bytes = bytes - #entry[2][4]
  end
  redis.call('XTRIM', log, 'MINID', (up_to + 1) .. '-0')
  floor = up_to
  redis.call('HSET', meta, 'floor', floor, 'bytes', bytes)
end
return {'ok', tostring(floor), tostring(top)}
