#!lua name=sluice

-- sluice_publish: the one atomic write of Sluice.
--
-- FCALL sluice_publish 3 <log> <meta> <feed>
--       <task> <type> <data> <final> <idempotency_key>
--       [<log_cap> <feed_cap> <idle_ttl_secs> <retention_secs> <max_data_bytes>]
--
-- <data> is the event's data as MessagePack; <final> is "1" or "0";
-- <idempotency_key> is "" for none. The optional limits default to
-- 10000, 256, 86400, 86400, 65536.
--
-- Reply: {seq, ts_ms, duplicate} where duplicate is 1 when the idempotency
-- key was already used for this task (seq is then the first publish's seq
-- and nothing was written).
-- Errors: "SLUICE_CLOSED ...", "SLUICE_INVALID ...", "SLUICE_TOO_LARGE ...".
--
-- The library also holds the edges' feed bookkeeping (one call per shard,
-- whose feeds share a hash tag, so one Redis Cluster slot):
--
-- FCALL sluice_feeds_join <n> <feed...> <group>
--   creates the group on each feed at its current end ('$', MKSTREAM); a
--   group that exists is kept where it is. Reply: how many were created.
-- FCALL sluice_feeds_leave <n> <feed...> <group>
--   destroys the group on each feed that has it. Reply: how many.
-- FCALL sluice_feeds_check <n> <feed...> <group>
--   {entries-added, length, group's entries-read} per feed, -1 where
--   unknown (no feed, no group, or Redis does not know the count).
-- FCALL sluice_feeds_stats <n> <feed...>
--   {total length, feeds that exist, {group, feeds, lag sum, feeds with
--   unknown lag}...}: one shard's summary for `sluice status`.

local function valid_name(s, max)
  return type(s) == 'string' and #s >= 1 and #s <= max and string.find(s, '^[A-Za-z0-9_%-%.:]+$') ~= nil
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil or n < 1 then return default end
  return math.floor(n)
end

local function publish(keys, args)
  local log, meta, feed = keys[1], keys[2], keys[3]
  local task, etype, data, final, idem = args[1], args[2], args[3], args[4], args[5]
  local log_cap = num(args[6], 10000)
  local feed_cap = num(args[7], 256)
  local idle_ttl = num(args[8], 86400)
  local retention = num(args[9], 86400)
  local max_data = num(args[10], 65536)

  if log == nil or meta == nil or feed == nil then
    return redis.error_reply('SLUICE_INVALID expected 3 keys: log, meta, feed')
  end
  if not valid_name(task, 128) then
    return redis.error_reply('SLUICE_INVALID task id must be 1-128 bytes of A-Z a-z 0-9 _ - . :')
  end
  if string.sub(log, -(#task + 7)) ~= (':t:' .. task .. ':log') then
    return redis.error_reply('SLUICE_INVALID log key does not belong to the task')
  end
  if not valid_name(etype, 64) or string.sub(etype, 1, 7) == 'sluice.' then
    return redis.error_reply('SLUICE_INVALID event type must be 1-64 bytes of A-Z a-z 0-9 _ - . : and not start with sluice.')
  end
  if data == nil or #data == 0 then
    return redis.error_reply('SLUICE_INVALID data must be MessagePack (nil is 0xc0)')
  end
  if #data > max_data then
    return redis.error_reply('SLUICE_TOO_LARGE data is ' .. #data .. ' bytes; the limit is ' .. max_data)
  end
  local ok = pcall(cmsgpack.unpack, data)
  if not ok then
    return redis.error_reply('SLUICE_INVALID data is not valid MessagePack')
  end
  if final ~= '1' and final ~= '0' then
    return redis.error_reply('SLUICE_INVALID final must be "1" or "0"')
  end
  if idem == nil then idem = '' end
  if #idem > 128 then
    return redis.error_reply('SLUICE_INVALID idempotency key is longer than 128 bytes')
  end

  if idem ~= '' then
    local prev = redis.call('HGET', meta, 'idem:' .. idem)
    if prev then
      return {tonumber(prev), tonumber(redis.call('HGET', meta, 'updated') or 0), 1}
    end
  end

  if redis.call('HGET', meta, 'state') == 'closed' then
    return redis.error_reply('SLUICE_CLOSED task ' .. task .. ' is closed')
  end

  local t = redis.call('TIME')
  local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

  -- The task's epoch: drawn when its meta is created (the server's clock in
  -- microseconds), so a task recreated after Redis lost its data (wiped,
  -- restarted without persistence) has another one, and positions handed
  -- out in the old history no longer verify. 0 for tasks created before
  -- epochs existed.
  local epoch = tonumber(redis.call('HGET', meta, 'epoch')) or 0
  local seq = tonumber(redis.call('HGET', meta, 'seq'))
  local fresh = (seq == nil)
  if fresh then
    epoch = tonumber(t[1] .. string.format('%06d', tonumber(t[2])))
    -- Meta missing (expired apart, deleted, partial restore): continue after
    -- the log's last entry so explicit stream ids stay increasing.
    seq = 0
    local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
    if #last > 0 then
      seq = tonumber(string.match(last[1][1], '^(%d+)')) or 0
    end
  end
  seq = seq + 1
  local is_final = (final == '1')

  -- The stored event: a MessagePack map {task, seq, type, data, ts, final,
  -- epoch}, with the producer's data spliced in unchanged.
  local p = cmsgpack.pack
  local env = '\135' .. p('task') .. p(task) .. p('seq') .. p(seq) .. p('type') .. p(etype)
    .. p('data') .. data .. p('ts') .. p(ts) .. p('final') .. p(is_final) .. p('epoch') .. p(epoch)

  redis.call('XADD', log, 'MAXLEN', '~', log_cap, seq .. '-0', 'e', env)
  redis.call('XADD', feed, 'MAXLEN', '~', feed_cap, '*', 'task', task, 'e', env)

  local state = 'open'
  if is_final then state = 'closed' end
  redis.call('HSET', meta, 'seq', seq, 'state', state, 'latest', env, 'updated', ts)
  if seq == 1 then redis.call('HSET', meta, 'created', ts) end
  if fresh then redis.call('HSET', meta, 'epoch', string.format('%d', epoch)) end
  if idem ~= '' then redis.call('HSET', meta, 'idem:' .. idem, seq) end

  local ttl = idle_ttl
  if is_final then ttl = retention end
  redis.call('EXPIRE', log, ttl)
  redis.call('EXPIRE', meta, ttl)
  return {seq, ts, 0}
end

-- The value of `name` in a flat RESP2 field list {k1, v1, k2, v2, ...}
-- (what XINFO replies are inside a script); false for a null.
local function field(t, name)
  for i = 1, #t, 2 do
    if t[i] == name then return t[i + 1] end
  end
  return nil
end

local function feeds_join(keys, args)
  local group = args[1]
  local created = 0
  for _, k in ipairs(keys) do
    local r = redis.pcall('XGROUP', 'CREATE', k, group, '$', 'MKSTREAM')
    if type(r) == 'table' and r.err then
      if string.sub(r.err, 1, 9) ~= 'BUSYGROUP' then return redis.error_reply(r.err) end
    else
      created = created + 1
    end
  end
  return created
end

local function feeds_leave(keys, args)
  local destroyed = 0
  for _, k in ipairs(keys) do
    if redis.call('EXISTS', k) == 1 then
      destroyed = destroyed + redis.call('XGROUP', 'DESTROY', k, args[1])
    end
  end
  return destroyed
end

local function feeds_check(keys, args)
  local out = {}
  for _, k in ipairs(keys) do
    local added, length, read = -1, -1, -1
    if redis.call('EXISTS', k) == 1 then
      local s = redis.call('XINFO', 'STREAM', k)
      added = tonumber(field(s, 'entries-added')) or -1
      length = tonumber(field(s, 'length')) or -1
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do
        if field(g, 'name') == args[1] then
          read = tonumber(field(g, 'entries-read')) or -1
        end
      end
    end
    out[#out + 1] = added
    out[#out + 1] = length
    out[#out + 1] = read
  end
  return out
end

local function feeds_stats(keys)
  local length, existing = 0, 0
  local groups, order = {}, {}
  for _, k in ipairs(keys) do
    if redis.call('EXISTS', k) == 1 then
      existing = existing + 1
      length = length + redis.call('XLEN', k)
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do
        local name = field(g, 'name')
        local e = groups[name]
        if not e then
          e = {0, 0, 0}
          groups[name] = e
          order[#order + 1] = name
        end
        e[1] = e[1] + 1
        local lag = tonumber(field(g, 'lag'))
        if lag then e[2] = e[2] + lag else e[3] = e[3] + 1 end
      end
    end
  end
  local out = {length, existing}
  for _, name in ipairs(order) do
    local e = groups[name]
    out[#out + 1] = {name, e[1], e[2], e[3]}
  end
  return out
end

redis.register_function('sluice_publish', publish)
redis.register_function('sluice_feeds_join', feeds_join)
redis.register_function('sluice_feeds_leave', feeds_leave)
redis.register_function('sluice_feeds_check', feeds_check)
redis.register_function('sluice_feeds_stats', feeds_stats)
