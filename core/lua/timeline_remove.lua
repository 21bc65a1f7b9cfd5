-- Removes one post from a batch of timelines and tells online followers to drop it.
--
-- KEYS[1..n] timeline keys  KEYS[n+1..2n] presence keys
-- ARGV[1] member  ARGV[2] live delete payload
-- ARGV[3] publish command (PUBLISH, or SPUBLISH on a cluster: see timeline_add.lua)
-- ARGV[4], ARGV[5] what goes before and after an id in a channel  ARGV[6..5+n] ids
-- With no KEYS, the 2n keys follow the ids in ARGV (Redis Cluster, as timeline_add.lua).
-- Returns the number of timelines the post was removed from.
local K, at, n = KEYS, 0, #KEYS / 2
if n == 0 then
  n = (#ARGV - 5) / 3
  K, at = ARGV, 5 + n
end
local publish, prefix, suffix = ARGV[3], ARGV[4], ARGV[5]
local removed = 0
for i = 1, n do
  removed = removed + redis.call('ZREM', K[at + i], ARGV[1])
  if redis.call('EXISTS', K[at + n + i]) == 1 then
    redis.call(publish, prefix .. ARGV[5 + i] .. suffix, ARGV[2])
  end
end
return removed
