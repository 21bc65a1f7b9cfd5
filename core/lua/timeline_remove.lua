-- Removes one post from a batch of timelines and tells online followers to drop it.
--
-- KEYS[1..n] timeline keys  KEYS[n+1..2n] presence keys
-- ARGV[1] member  ARGV[2] live delete payload  ARGV[3] channel prefix  ARGV[4..3+n] ids
-- With no KEYS, the 2n keys follow the ids in ARGV (Redis Cluster, as timeline_add.lua).
-- Returns the number of timelines the post was removed from.
local K, at, n = KEYS, 0, #KEYS / 2
if n == 0 then
  n = (#ARGV - 3) / 3
  K, at = ARGV, 3 + n
end
local removed = 0
for i = 1, n do
  removed = removed + redis.call('ZREM', K[at + i], ARGV[1])
  if redis.call('EXISTS', K[at + n + i]) == 1 then
    redis.call('PUBLISH', ARGV[3] .. ARGV[3 + i], ARGV[2])
  end
end
return removed
