-- A ranked first page's reads of the reader's own keys, in one call
-- (server/feed/candidates.py). Every key carries the reader's hash tag, so the script
-- runs on one node of a Redis Cluster as on a single Redis. It reads no post key.
--
-- KEYS[1] the reader's timeline (keys.timeline), KEYS[2] their following set
-- (keys.following), KEYS[3] their affinity to authors (keys.ranking_affinity), KEYS[4]
-- the posts they were shown (keys.ranking_seen).
-- ARGV[1] how many timeline entries, newest first; ARGV[2] the oldest impression time
-- (ms) that can concern a candidate (an impression is never older than its post).
--
-- Returns {members, followees, affinity, seen}: the timeline's newest members (the
-- sentinel included when reached; none: the timeline is missing), the following set's
-- members (none: not cached), the affinity score of each of those followees (nil: none),
-- and the members of the posts shown since ARGV[2].

local members = redis.call('ZRANGE', KEYS[1], '+', '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[1])
local followees = redis.call('SMEMBERS', KEYS[2])
local affinity = {}
for first = 1, #followees, 1000 do -- chunks: Lua's unpack has a stack limit
  local last = math.min(first + 999, #followees)
  local scores = redis.call('ZMSCORE', KEYS[3], unpack(followees, first, last))
  for k = 1, #scores do affinity[first + k - 1] = scores[k] end
end
local seen = redis.call('ZRANGE', KEYS[4], '+inf', ARGV[2], 'BYSCORE', 'REV')
return {members, followees, affinity, seen}
