-- Adjusts a cached counter only when it is cached (a counter made up here would be
-- wrong); Postgres is the truth and the TTL heals any drift. A tombstone stays as it is.
-- KEYS[1] counters; ARGV[1] which (1 likes, 2 reposts, 3 replies), ARGV[2] by how much.
local raw = redis.call('GET', KEYS[1])
if not raw or raw == '-' then return false end
local c = {string.match(raw, '^(%d+),(%-?%d+),(%-?%d+),(%-?%d+)$')}
if #c ~= 4 then
  redis.call('DEL', KEYS[1])  -- not ours: the next read caches it from Postgres
  return false
end
local i = tonumber(ARGV[1]) + 1
c[i] = tonumber(c[i]) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], table.concat(c, ','), 'KEEPTTL')
return c[i]
