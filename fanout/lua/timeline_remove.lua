-- Removes one post from a batch of timelines and tells online followers to drop it.
--
-- KEYS[1..n] timeline keys  KEYS[n+1..2n] presence keys
-- ARGV[1] member  ARGV[2] live delete payload  ARGV[3] channel prefix  ARGV[4..3+n] ids
-- Returns the number of timelines the post was removed from.
local n = #KEYS / 2
local removed = 0
for i = 1, n do
  removed = removed + redis.call('ZREM', KEYS[i], ARGV[1])
  if redis.call('EXISTS', KEYS[n + i]) == 1 then
    redis.call('PUBLISH', ARGV[3] .. ARGV[3 + i], ARGV[2])
  end
end
return removed
