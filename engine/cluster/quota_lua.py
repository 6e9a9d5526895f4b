"""The Lua side of cluster quotas: engine/quotas.py's sliding windows, kept in Valkey/Redis.

Each script is one atomic decision. Time is the engine's clock, passed in as `now`, never the
server's. Numbers travel as "%.17g" strings and are added in Lua doubles (not HINCRBYFLOAT's
long doubles), so a check here compares the sums engine/quotas.py would.

Keys of one user (all tagged `{user}`):
- `cfg`  hash: `tier` (absent: the default tier), `o:<resource>` = "<limit> <window, 0: none>"
- `use:<resource>` hash: `w` window (0: a running total), `t` the total, and for a window `h`
  the newest sub-bucket seen and one field per live sub-bucket k = floor(t / width) holding its
  usage. As in engine/quotas.py, `t` is kept by adding and summed again only when a new
  sub-bucket starts (at most once per width), so the common call reads three fields.
- `resv` sorted set: reservation id scored by its expiry; `resa` hash: id -> "res amount ...";
  `rsum` hash: resource -> amount held by open reservations (deleted when none is open)

A resource's limits travel with each call as its "tier spec": "<tier> <limit> <window> ..."
for every tier, the default first, so the server holds no copy of the configuration to go
stale or to be lost with a restart.
"""

from __future__ import annotations

COMMON = r"""
local now, buckets = tonumber(ARGV[1]), tonumber(ARGV[2])
local function fmt(x) return string.format('%.17g', x) end

-- The user's limit and window (0: none) for a resource: their override, else their tier's.
local function limit_of(tier, override, spec)
  if override then
    local l, w = string.match(override, '^(%S+) (%S+)$')
    return tonumber(l), tonumber(w)
  end
  local first_l, first_w
  for name, l, w in string.gmatch(spec, '(%S+) (%S+) (%S+)') do
    if name == tier then return tonumber(l), tonumber(w) end
    if not first_l then first_l, first_w = l, w end
  end
  return tonumber(first_l), tonumber(first_w)
end

-- The live sub-buckets in ascending order, read once per call when a path needs them.
local function live(st)
  if st.live then return st.live end
  local raw = redis.call('HGETALL', st.key)
  local kept, dead = {}, {}
  for i = 1, #raw, 2 do
    local k = tonumber(raw[i])
    if k then
      if st.head and k >= st.head - buckets then kept[#kept + 1] = {k, tonumber(raw[i + 1])}
      else dead[#dead + 1] = raw[i] end
    end
  end
  if #dead > 0 then redis.call('HDEL', st.key, unpack(dead)) end
  table.sort(kept, function(a, b) return a[1] < b[1] end)
  st.live = kept
  return kept
end

local function add(st, amount)
  if st.window == 0 then
    st.total = math.max(0, st.total + amount)
    redis.call('HSET', st.key, 'w', 0, 't', fmt(st.total))
    return
  end
  local field = tostring(st.head)
  local current = tonumber(redis.call('HGET', st.key, field) or '0')
  st.total = st.total + amount
  redis.call('HSET', st.key, 'w', fmt(st.window), 'h', field, 't', fmt(st.total),
    field, fmt(current + amount))
  redis.call('PEXPIRE', st.key, math.ceil((st.window + st.width) * 1000) + 60000)
  st.live = nil
end

-- One resource's usage in the shape `window` needs now. A new sub-bucket drops those that left
-- the window and sums the rest again (a clock going backwards keeps the newest). A changed
-- window carries the amount over as if used now, as engine/quotas.py does.
local function usage(key, window)
  local stored, head, total = unpack(redis.call('HMGET', key, 'w', 'h', 't'))
  stored, head, total = tonumber(stored), tonumber(head), tonumber(total) or 0
  local st = {key = key, window = window, total = total}
  if window ~= 0 then st.width = window / buckets end
  if stored and stored ~= 0 then
    local cur = math.max(math.floor(now / (stored / buckets)), head)
    if cur > head then
      st.head = cur
      local sum = 0
      for _, b in ipairs(live(st)) do sum = sum + b[2] end
      st.total = sum
      if stored == window then redis.call('HSET', key, 'h', cur, 't', fmt(sum)) end
    else
      st.head = head
    end
  end
  if stored and stored ~= window then
    local carried = st.total
    redis.call('DEL', key)
    st.total, st.live = 0, nil
    st.head = window ~= 0 and math.floor(now / st.width) or nil
    if carried > 0 then add(st, carried) end
  elseif window ~= 0 and not st.head then
    st.head = math.floor(now / st.width)
    st.live = {}
  end
  return st
end

-- When sub-bucket k leaves the window: its end plus the window.
local function expiry(st, k) return (k + buckets + 1) * st.width end

local function time_to_free(st, excess)
  local freed = 0
  for _, b in ipairs(live(st)) do
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
  for _, b in ipairs(live(st)) do
    if b[2] ~= 0 then return fmt(expiry(st, b[1]) - now) end
  end
  return '0'
end

-- Remove one open reservation and its amounts from the sum; false if it is not open.
local function take(resv, resa, rsum, id)
  local text = redis.call('HGET', resa, id)
  if not text then return false end
  redis.call('HDEL', resa, id)
  redis.call('ZREM', resv, id)
  if redis.call('ZCARD', resv) == 0 then
    redis.call('DEL', rsum)  -- exactly zero, whatever drift the sums had
    return true
  end
  for res, amount in string.gmatch(text, '(%S+) (%S+)') do
    local held = tonumber(redis.call('HGET', rsum, res) or '0')
    redis.call('HSET', rsum, res, fmt(held - tonumber(amount)))
  end
  return true
end

-- Reservations past their expiry belong to a worker that died mid-turn: they lapse.
local function lapse(resv, resa, rsum)
  local dead = redis.call('ZRANGEBYSCORE', resv, '-inf', ARGV[1])
  for _, id in ipairs(dead) do take(resv, resa, rsum, id) end
end
"""

# Reserve every amount or none. `k`: cfg, resv, resa, rsum, ids keys and `use`, one usage key
# per wanted entry; `wanted`: {resource, amount, tier spec}... Returns {1, id} or
# {0, resource, limit, retry_after}.
RESERVE_FN = r"""
local function reserve(k, wanted, expires, reservation_retry)
  lapse(k.resv, k.resa, k.rsum)
  local tier = redis.call('HGET', k.cfg, 'tier')
  local held = {}
  for i, w in ipairs(wanted) do
    local res, amount = w[1], w[2]
    local limit, window = limit_of(tier, redis.call('HGET', k.cfg, 'o:' .. res), w[3])
    local st = usage(k.use[i], window)
    local reserved = tonumber(redis.call('HGET', k.rsum, res) or '0')
    if st.total + reserved + amount > limit then
      local retry
      if amount > limit then retry = 'inf'
      elseif reserved + amount > limit then retry = reservation_retry
      elseif window ~= 0 then retry = fmt(time_to_free(st, st.total + reserved + amount - limit))
      else retry = 'inf' end
      return {0, res, fmt(limit), retry}
    end
    held[i] = reserved
  end
  local id = redis.call('INCR', k.ids)
  local parts, sums = {}, {}
  for i, w in ipairs(wanted) do
    parts[#parts + 1] = w[1] .. ' ' .. fmt(w[2])
    sums[#sums + 1] = w[1]
    sums[#sums + 1] = fmt(held[i] + w[2])
  end
  redis.call('HSET', k.rsum, unpack(sums))
  redis.call('HSET', k.resa, id, table.concat(parts, ' '))
  redis.call('ZADD', k.resv, expires, id)
  local gc = math.ceil((tonumber(expires) - now) * 1000) + 60000
  for _, key in ipairs({k.resv, k.resa, k.rsum}) do redis.call('PEXPIRE', key, gc) end
  return {1, id}
end

-- The reservation keys from KEYS[first..first+4] and a usage key per wanted entry after them;
-- the wanted entries from ARGV[from..] as (resource, amount, tier spec) triples.
local function reserve_args(first, from)
  local k = {cfg = KEYS[first], resv = KEYS[first + 1], resa = KEYS[first + 2],
             rsum = KEYS[first + 3], ids = KEYS[first + 4], use = {}}
  local wanted = {}
  for i = from, #ARGV, 3 do
    wanted[#wanted + 1] = {ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]}
    k.use[#wanted] = KEYS[first + 4 + #wanted]
  end
  return k, wanted
end
"""

# KEYS: cfg, resv, resa, rsum, ids, use:<res>...
# ARGV: now, buckets, expiry, reservation retry, then (resource, amount, tier spec)...
RESERVE = COMMON + RESERVE_FN + r"""
local k, wanted = reserve_args(1, 5)
return reserve(k, wanted, ARGV[3], ARGV[4])
"""

# Replace an open reservation by the actual use. `k`: cfg, resv, resa, rsum keys and `use`, one
# usage key per used entry; `used`: {resource, amount, tier spec}... Returns 1 if it was open
# (a repeat, or a reservation released or lapsed, records nothing).
SETTLE_FN = r"""
local function settle(k, id, used)
  if not take(k.resv, k.resa, k.rsum, id) then return 0 end
  local tier = redis.call('HGET', k.cfg, 'tier')
  for i, u in ipairs(used) do
    local _, window = limit_of(tier, redis.call('HGET', k.cfg, 'o:' .. u[1]), u[3])
    add(usage(k.use[i], window), u[2])
  end
  return 1
end

-- The keys from KEYS[first..first+3] and a usage key per used entry after them; the used
-- entries from ARGV[from..] as (resource, amount, tier spec) triples.
local function settle_args(first, from)
  local k = {cfg = KEYS[first], resv = KEYS[first + 1], resa = KEYS[first + 2],
             rsum = KEYS[first + 3], use = {}}
  local used = {}
  for i = from, #ARGV, 3 do
    used[#used + 1] = {ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]}
    k.use[#used] = KEYS[first + 3 + #used]
  end
  return k, used
end
"""

# KEYS: cfg, resv, resa, rsum, use:<res>...   ARGV: now, buckets, id, then (resource, amount,
# tier spec)... for the actual use (resources with 0 left out).
SETTLE = COMMON + SETTLE_FN + r"""
local k, used = settle_args(1, 4)
return settle(k, ARGV[3], used)
"""

# KEYS: resv, resa, rsum   ARGV: now, buckets, id   Returns 1 if it was open.
RELEASE = COMMON + r"""
if take(KEYS[1], KEYS[2], KEYS[3], ARGV[3]) then return 1 end
return 0
"""

# KEYS: cfg, use:<res>   ARGV: now, buckets, resource, amount or delta, tier spec, mode, at
# ("record": usage that happened now; "adjust": move a no-window total; "restore": usage that
# happened at `at`, put back in its sub-bucket if that is still in the window). Returns {1}, or
# {0, window} when "adjust" meets a windowed resource or "restore" one without a window.
CHANGE = COMMON + r"""
local cfg, res, amount, mode = KEYS[1], ARGV[3], tonumber(ARGV[4]), ARGV[6]
local tier, override = unpack(redis.call('HMGET', cfg, 'tier', 'o:' .. res))
local _, window = limit_of(tier, override, ARGV[5])
if (mode == 'adjust' and window ~= 0) or (mode == 'restore' and window == 0) then
  return {0, fmt(window)}
end
local st = usage(KEYS[2], window)
if amount == 0 then return {1} end
if mode ~= 'restore' then
  add(st, amount)
  return {1}
end
local k = math.min(math.floor(tonumber(ARGV[7]) / st.width), st.head)
if k >= st.head - buckets then
  local field = tostring(k)
  local current = tonumber(redis.call('HGET', st.key, field) or '0')
  st.total = st.total + amount
  redis.call('HSET', st.key, 'w', fmt(st.window), 'h', st.head, 't', fmt(st.total),
    field, fmt(current + amount))
  redis.call('PEXPIRE', st.key, math.ceil((st.window + st.width) * 1000) + 60000)
end
return {1}
"""

# KEYS: cfg, resv, resa, rsum, use:<res>...   ARGV: now, buckets, then (resource, tier spec)...
# Returns one string (one reply to parse, not sixteen: the console reads hundreds a second):
# per resource "limit used reserved reset_in", space-separated, then the user's tier if it is
# not the default.
USAGE = COMMON + r"""
local cfg, resv, resa, rsum = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
lapse(resv, resa, rsum)
local tier = redis.call('HGET', cfg, 'tier')
local report = {}
for i = 3, #ARGV, 2 do
  local res = ARGV[i]
  local limit, window = limit_of(tier, redis.call('HGET', cfg, 'o:' .. res), ARGV[i + 1])
  local st = usage(KEYS[4 + (i - 1) / 2], window)
  local reserved = tonumber(redis.call('HGET', rsum, res) or '0')
  report[#report + 1] = fmt(limit) .. ' ' .. fmt(st.total) .. ' ' .. fmt(reserved) .. ' '
    .. reset_in(st)
end
if tier then report[#report + 1] = tier end
return table.concat(report, ' ')
"""
