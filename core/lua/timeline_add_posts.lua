-- Adds posts to one timeline that exists (core/timelines.py: a missing one is rebuilt
-- when read), trimming it to the cap: an author's own new post (the API server, then
-- fan-out again) and a follow's backfill.
-- KEYS[1] timeline  ARGV[1] cap  ARGV[2..] members. Returns entries added.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local added = 0
for i = 2, #ARGV do added = added + redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
local cap = tonumber(ARGV[1])
if redis.call('ZCARD', KEYS[1]) > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(cap + 1))
end
return added
