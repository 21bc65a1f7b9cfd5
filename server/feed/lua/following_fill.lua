-- Stores a user's following set unless a follow or unfollow changed it since Postgres
-- was read (server/feed/following.py).
-- KEYS[1] following set, KEYS[2] version token; ARGV[1] token seen before reading
-- Postgres ("" for none), ARGV[2] ttl, ARGV[3..] followee ids. Returns 1 if stored.
local seen = redis.call('GET', KEYS[2]) or ''
if seen ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local n = #ARGV
for i = 3, n, 1000 do  -- chunks: Lua's unpack has a stack limit
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, n)))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
