"""The Lua side of cluster quotas: engine/quotas.py's sliding windows, kept in Valkey/Redis.

Each script is one atomic decision. Time is the engine's clock, passed in as `now`, never the
server's. Numbers travel as "%.17g" strings and are added in Lua doubles (not HINCRBYFLOAT's
long doubles), so a check here compares exactly the sums engine/quotas.py would.

Keys of one user (all tagged `{user}`):
- `cfg`  hash: `tier` (absent: the default tier), `o:<resource>` = "<limit> <window, 0: none>"
- `use:<resource>` hash: `w` window (0: a running total `t`), `h` the newest sub-bucket seen,
  and one field per live sub-bucket k = floor(t / width) holding its usage
- `resv` sorted set: reservation id scored by its expiry; `resa` hash: id -> "res amount ...";
  `rsum` hash: resource -> amount reserved by all open reservations (deleted when none is open)
"""

from __future__ import annotations

COMMON = r"""
local function fmt(x) return string.format('%.17g', x) end

local tiers = cjson.decode(ARGV[3])
local default_tier = ARGV[4]
local buckets = tonumber(ARGV[2])
local now = tonumber(ARGV[1])

-- The user's limit for a resource: override, else their tier's. Window 0 means no window.
local function limit_of(cfg, res)
  local o = redis.call('HGET', cfg, 'o:' .. res)
  if o then
    local l, w = string.match(o, '^(%S+) (%S+)$')
    return tonumber(l), tonumber(w)
  end
  local tier = redis.call('HGET', cfg, 'tier') or default_tier
  local entry = (tiers[tier] or tiers[default_tier])[res]
  return entry[1], entry[2]
end

local function add(st, amount)
  if st.window == 0 then
    st.total = math.max(0, st.total + amount)
    redis.call('HSET', st.key, 'w', 0, 't', fmt(st.total))
    return
  end
  local last = st.live[#st.live]
  if last and last[1] == st.head then
    last[2] = last[2] + amount
  else
    last = {st.head, amount}
    st.live[#st.live + 1] = last
  end
  st.total = st.total + amount
  redis.call('HSET', st.key, 'w', fmt(st.window), 'h', st.head, tostring(st.head), fmt(last[2]))
  redis.call('PEXPIRE', st.key, math.ceil((st.window + st.width) * 1000) + 60000)
end

-- Usage of one resource in the shape `window` needs now, sub-buckets past the window dropped
-- (a clock going backwards keeps the newest). A changed window carries the amount over as if
-- used now, as engine/quotas.py does: it can only expire later than it would have.
local function loaded(key, window)
  local raw = redis.call('HGETALL', key)
  local stored, head, used = nil, nil, 0
  local live = {}
  for i = 1, #raw, 2 do
    local f, v = raw[i], raw[i + 1]
    if f == 'w' then stored = tonumber(v)
    elseif f == 'h' then head = tonumber(v)
    elseif f == 't' then used = tonumber(v)
    else live[#live + 1] = {tonumber(f), tonumber(v)} end
  end
  if stored ~= nil and stored ~= 0 then
    local cur = math.max(math.floor(now / (stored / buckets)), head)
    local kept = {}
    used = 0
    for _, b in ipairs(live) do
      if b[1] >= cur - buckets then
        kept[#kept + 1] = b
        used = used + b[2]
      elseif stored == window then
        redis.call('HDEL', key, tostring(b[1]))
      end
    end
    table.sort(kept, function(a, b) return a[1] < b[1] end)
    if stored == window and cur ~= head then redis.call('HSET', key, 'h', cur) end
    live, head = kept, cur
  end
  local st = {key = key, window = window, total = 0, live = {}}
  if window ~= 0 then st.width = window / buckets end
  if stored ~= nil and stored ~= window then
    redis.call('DEL', key)
    if window ~= 0 then st.head = math.floor(now / st.width) end
    if used > 0 then add(st, used) end
    return st
  end
  st.total = used
  if window ~= 0 then
    st.head = head or math.floor(now / st.width)
    st.live = live
  end
  return st
end

-- When sub-bucket k leaves the window: its end plus the window.
local function expiry(st, k) return (k + buckets + 1) * st.width end

local function time_to_free(st, excess)
  local freed = 0
  for _, b in ipairs(st.live) do
    if b[1] < st.head then
      freed = freed + b[2]
      if freed >= excess then return expiry(st, b[1]) - now end
    end
  end
  return expiry(st, st.head) - now
end

local function reset_in(st)
  if st.window == 0 then
    if st.total ~= 0 then return 'inf' end
    return '0'
  end
  for _, b in ipairs(st.live) do
    if b[2] ~= 0 then return fmt(expiry(st, b[1]) - now) end
  end
  return '0'
end

local function parse_amounts(text)
  local amounts = {}
  for res, amount in string.gmatch(text, '(%S+) (%S+)') do
    amounts[#amounts + 1] = {res, tonumber(amount)}
  end
  return amounts
end

-- Remove one open reservation and its amounts from the sum; nil if it is not open.
local function take(resv, resa, rsum, id)
  local text = redis.call('HGET', resa, id)
  if not text then return nil end
  redis.call('HDEL', resa, id)
  redis.call('ZREM', resv, id)
  local amounts = parse_amounts(text)
  if redis.call('ZCARD', resv) == 0 then
    redis.call('DEL', rsum)  -- exactly zero, whatever drift the sums had
  else
    for _, a in ipairs(amounts) do
      local held = tonumber(redis.call('HGET', rsum, a[1]) or '0')
      redis.call('HSET', rsum, a[1], fmt(held - a[2]))
    end
  end
  return amounts
end

-- Reservations past their expiry belong to a worker that died mid-turn: they lapse.
local function lapse(resv, resa, rsum)
  local dead = redis.call('ZRANGEBYSCORE', resv, '-inf', fmt(now))
  for _, id in ipairs(dead) do take(resv, resa, rsum, id) end
end
"""

# KEYS: cfg, resv, resa, rsum, ids, use:<res>...
# ARGV: now, buckets, tiers, default tier, expiry, reservation retry, then resource, amount...
RESERVE = COMMON + r"""
local cfg, resv, resa, rsum, ids = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local expires, reservation_retry = ARGV[5], ARGV[6]
lapse(resv, resa, rsum)
local wanted = {}
for i = 7, #ARGV, 2 do
  local res, amount = ARGV[i], tonumber(ARGV[i + 1])
  local limit, window = limit_of(cfg, res)
  local st = loaded(KEYS[5 + (i - 5) / 2], window)
  local reserved = tonumber(redis.call('HGET', rsum, res) or '0')
  if st.total + reserved + amount > limit then
    local retry
    if amount > limit then retry = 'inf'
    elseif reserved + amount > limit then retry = reservation_retry
    elseif window ~= 0 then retry = fmt(time_to_free(st, st.total + reserved + amount - limit))
    else retry = 'inf' end
    return {0, res, fmt(limit), retry}
  end
  wanted[#wanted + 1] = {res, amount}
end
local id = redis.call('INCR', ids)
local parts = {}
for _, w in ipairs(wanted) do
  parts[#parts + 1] = w[1] .. ' ' .. fmt(w[2])
  local held = tonumber(redis.call('HGET', rsum, w[1]) or '0')
  redis.call('HSET', rsum, w[1], fmt(held + w[2]))
end
redis.call('HSET', resa, id, table.concat(parts, ' '))
redis.call('ZADD', resv, expires, id)
local gc = math.ceil((tonumber(expires) - now) * 1000) + 60000
for _, key in ipairs({resv, resa, rsum}) do redis.call('PEXPIRE', key, gc) end
return {1, id}
"""

# KEYS: cfg, resv, resa, rsum, use:<res>...   ARGV: now, buckets, tiers, default tier, id,
# then resource, amount... (the actual use; resources with 0 left out)
SETTLE = COMMON + r"""
local cfg, resv, resa, rsum = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if not take(resv, resa, rsum, ARGV[5]) then return 0 end
for i = 6, #ARGV, 2 do
  local res, amount = ARGV[i], tonumber(ARGV[i + 1])
  local _, window = limit_of(cfg, res)
  add(loaded(KEYS[4 + (i - 4) / 2], window), amount)
end
return 1
"""

# KEYS: resv, resa, rsum   ARGV: id
RELEASE = r"""
local resv, resa, rsum, id = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local text = redis.call('HGET', resa, id)
if not text then return 0 end
redis.call('HDEL', resa, id)
redis.call('ZREM', resv, id)
if redis.call('ZCARD', resv) == 0 then
  redis.call('DEL', rsum)
  return 1
end
for res, amount in string.gmatch(text, '(%S+) (%S+)') do
  local held = tonumber(redis.call('HGET', rsum, res) or '0')
  redis.call('HSET', rsum, res, string.format('%.17g', held - tonumber(amount)))
end
return 1
"""

# KEYS: cfg, use:<res>   ARGV: now, buckets, tiers, default tier, resource, amount or delta,
# mode ("record": usage that happened now; "adjust": move a no-window total)
CHANGE = COMMON + r"""
local cfg, res, amount, mode = KEYS[1], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local _, window = limit_of(cfg, res)
if mode == 'adjust' and window ~= 0 then return {0, fmt(window)} end
local st = loaded(KEYS[2], window)
if amount ~= 0 then add(st, amount) end
return {1}
"""

# KEYS: cfg, resv, resa, rsum, use:<res>...   ARGV: now, buckets, tiers, default tier, resource...
# Returns per resource: limit, window, used, reserved, reset_in.
USAGE = COMMON + r"""
local cfg, resv, resa, rsum = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
lapse(resv, resa, rsum)
local report = {}
for i = 5, #ARGV do
  local res = ARGV[i]
  local limit, window = limit_of(cfg, res)
  local st = loaded(KEYS[i], window)
  local reserved = tonumber(redis.call('HGET', rsum, res) or '0')
  report[#report + 1] = {fmt(limit), fmt(window), fmt(st.total), fmt(reserved), reset_in(st)}
end
return report
"""
