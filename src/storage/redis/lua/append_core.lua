-- Shared by append.lua and fail_orphan.lua: store one event in a session's
-- log. meta/log are the session's hash and stream; m is
-- HMGET meta top floor bytes max_events max_bytes. index is the job's
-- append index (the retry key), or false for the reaper's terminal, which
-- leaves the job's own index alone so that a retry of what the job sent
-- still reads as a duplicate and anything new as closed. Returns the seq.
-- Sequence numbers and byte counts stay far below 1e14, so Lua's number to
-- string conversion keeps them exact.
local function store_event(meta, log, m, job, index, terminal, body, wake)
  local top = tonumber(m[1]) + 1
  local floor = tonumber(m[2])
  local bytes = tonumber(m[3]) + #body
  local max_events = tonumber(m[4])
  local max_bytes = tonumber(m[5])
  redis.call('XADD', log, top .. '-0', 'j', job, 'b', body)
  -- A log first written while its session waits for a stream takes the
  -- session's expiry (the resume window), so it never outlives it.
  local ttl = redis.call('PTTL', meta)
  if ttl > 0 and redis.call('PTTL', log) == -1 then
    redis.call('PEXPIRE', log, ttl)
  end
  -- Retention: drop the oldest events until both caps hold; the newest
  -- event always stays.
  local new_floor = floor
  while (top - new_floor > max_events or bytes > max_bytes) and new_floor < top - 1 do
    local batch = redis.call('XRANGE', log, (new_floor + 1) .. '-0', '+', 'COUNT', 64)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if not (top - new_floor > max_events or bytes > max_bytes) or new_floor >= top - 1 then
        break
      end
      bytes = bytes - #entry[2][4]
      new_floor = tonumber(string.match(entry[1], '^(%d+)'))
    end
  end
  if new_floor > floor then
    redis.call('XTRIM', log, 'MINID', (new_floor + 1) .. '-0')
  end
  redis.call('HSET', meta, 'top', top, 'floor', new_floor, 'bytes', bytes)
  if index then
    redis.call('HSET', meta, 'j:' .. job, index .. ':' .. top)
  end
  if terminal then
    redis.call('HSET', meta, 't:' .. job, top)
  end
  redis.call('PUBLISH', wake, top)
  return top
end
