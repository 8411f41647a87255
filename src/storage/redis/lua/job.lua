-- Job scripts, one entry point. KEYS: job, lease, running, subs.
-- ARGV[1]: operation, then its arguments.
-- put      rec                          -> {'ok'} | {'exists'}
-- acquire  token, ttl_ms, node, expiry_ms, member -> {'ok'} | {'notfound'} | {'held'}
-- renew    token, ttl_ms, expiry_ms, member -> {'ok', cancel} | {'fenced'}
-- finish   token, status, member, terminal, keep_ms -> {'ok'} | {'fenced'}
-- cancel                                -> {'ok', owner} | {'notfound'}
-- subscribe subscriber                  -> {'ok'} | {'notfound'}
-- Leases are Redis keys with PX expiry (Redis's clock decides); `running`
-- orders them by expected expiry for the reapers.
local job, lease, running, subs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
if op == 'put' then
  if redis.call('EXISTS', job) == 1 then
    return {'exists'}
  end
  redis.call('HSET', job, 'rec', ARGV[2], 'status', 'running', 'cancel', 0)
  return {'ok'}
end
if op == 'renew' or op == 'finish' then
  if redis.call('GET', lease) ~= ARGV[2] then
    return {'fenced'}
  end
  if op == 'renew' then
    redis.call('PEXPIRE', lease, ARGV[3])
    redis.call('ZADD', running, ARGV[4], ARGV[5])
    return {'ok', redis.call('HGET', job, 'cancel') or '0'}
  end
  redis.call('DEL', lease)
  redis.call('ZREM', running, ARGV[4])
  redis.call('HSET', job, 'status', ARGV[3], 'term', ARGV[5])
  if tonumber(ARGV[6]) > 0 then
    redis.call('PEXPIRE', job, ARGV[6])
  end
  return {'ok'}
end
if redis.call('EXISTS', job) == 0 then
  return {'notfound'}
end
if op == 'acquire' then
  if not redis.call('SET', lease, ARGV[2], 'NX', 'PX', ARGV[3]) then
    return {'held'}
  end
  redis.call('HSET', job, 'owner', ARGV[4])
  redis.call('ZADD', running, ARGV[5], ARGV[6])
  return {'ok'}
end
if op == 'cancel' then
  redis.call('HSET', job, 'cancel', 1)
  local owner = redis.call('HGET', job, 'owner')
  if not owner then
    return {'notfound'}
  end
  return {'ok', owner}
end
if op == 'subscribe' then
  redis.call('SADD', subs, ARGV[2])
  return {'ok'}
end
return redis.error_reply('unknown job operation')
