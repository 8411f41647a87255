-- Session scripts share one entry point so one SHA serves them all.
-- KEYS: sess, meta, log. ARGV[1]: operation, ARGV[2]: the resume window in
-- ms ('0': keep forever), then the operation's arguments.
-- create  rec                -> {'ok', '1'} | {'exists'}
-- resume  presented          -> {'ok', generation} | {'gone'} | {'superseded'}
-- attach  presented, holder  -> {'ok', generation, previous holder or ''}
--                               | {'gone'} | {'closed'} | {'superseded'}
-- detach  holder             -> {'ok', '1' or '0'} | {'gone'}
-- close                      -> {'ok', holder or ''} | {'gone'}
-- ack     seq                -> {'ok', acked} | {'gone'}
-- sub     job id             -> {'ok', '1' added or '0' already} | {'gone'}
-- unsub   job id             -> {'ok', '1' removed or '0' absent} | {'gone'}
-- A presented generation is consumed (older ones stop working), then the
-- next one is issued: consume-then-issue in one step.
-- The resume window (§6.3) is the keys' expiry: it runs while no stream is
-- attached and stops (PERSIST) while one is.
local sess, meta, log = KEYS[1], KEYS[2], KEYS[3]
local op, window = ARGV[1], tonumber(ARGV[2])
local function start_window()
  if window > 0 then
    redis.call('PEXPIRE', sess, window)
    redis.call('PEXPIRE', meta, window)
    redis.call('PEXPIRE', log, window)
  end
end
if op == 'create' then
  if redis.call('EXISTS', sess) == 1 then
    return {'exists'}
  end
  redis.call('HSET', sess, 'rec', ARGV[3], 'issued', 1, 'used', 0, 'closed', 0)
  start_window()
  return {'ok', '1'}
end
local s = redis.call('HMGET', sess, 'issued', 'used', 'closed', 'holder', 'acked')
if not s[1] then
  return {'gone'}
end
if op == 'detach' then
  if s[4] == ARGV[3] then
    redis.call('HDEL', sess, 'holder')
    start_window()
    return {'ok', '1'}
  end
  return {'ok', '0'}
end
if op == 'close' then
  redis.call('HSET', sess, 'closed', 1)
  redis.call('HDEL', sess, 'holder')
  start_window()
  return {'ok', s[4] or ''}
end
if op == 'sub' or op == 'unsub' then
  -- The session's subscriptions (§7.6): job ids separated by spaces (ids
  -- never contain one: they are checked as key parts).
  local subs = redis.call('HGET', sess, 'subs') or ''
  local present = string.find(' ' .. subs .. ' ', ' ' .. ARGV[3] .. ' ', 1, true) ~= nil
  if op == 'sub' then
    if present then return {'ok', '0'} end
    if subs == '' then subs = ARGV[3] else subs = subs .. ' ' .. ARGV[3] end
  else
    if not present then return {'ok', '0'} end
    local kept = {}
    for id in string.gmatch(subs, '%S+') do
      if id ~= ARGV[3] then table.insert(kept, id) end
    end
    subs = table.concat(kept, ' ')
  end
  redis.call('HSET', sess, 'subs', subs)
  return {'ok', '1'}
end
if op == 'ack' then
  local acked = tonumber(ARGV[3])
  if s[5] and tonumber(s[5]) > acked then
    acked = tonumber(s[5])
  end
  redis.call('HSET', sess, 'acked', acked)
  return {'ok', tostring(acked)}
end
local issued, used = tonumber(s[1]), tonumber(s[2])
if op == 'attach' and s[3] == '1' then
  return {'closed'}
end
if ARGV[3] ~= '' then
  local presented = tonumber(ARGV[3])
  if presented < used or presented > issued then
    return {'superseded'}
  end
  used = presented
end
issued = issued + 1
if op == 'attach' then
  redis.call('HSET', sess, 'issued', issued, 'used', used, 'holder', ARGV[4])
  redis.call('PERSIST', sess)
  redis.call('PERSIST', meta)
  redis.call('PERSIST', log)
  return {'ok', tostring(issued), s[4] or ''}
end
redis.call('HSET', sess, 'issued', issued, 'used', used, 'closed', 0)
if not s[4] then
  start_window()
end
return {'ok', tostring(issued)}
