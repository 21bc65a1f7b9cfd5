-- Adds one post to a batch of followers' home timelines and publishes it live to those
-- who are online, atomically per batch. Serialized once by the caller (ARGV[3]).
--
-- KEYS[1..n]     timeline keys (tl:{uid})      KEYS[n+1..2n] presence keys (online:{uid})
-- ARGV[1] member (zero-padded post id)  ARGV[2] cap  ARGV[3] live event payload
-- ARGV[4] channel prefix ("u:")         ARGV[5..4+n] follower ids, same order as KEYS
--
-- Only timelines that exist are written: a missing one is rebuilt from Postgres when its
-- owner reads it, so writing into it would make a partial timeline look complete.
-- A replay (the member is already there) publishes nothing again.
-- Returns {timelines written, {offline follower ids}}.
--
-- This loop is fan-out's hot path and each redis.call costs about 1 us: one ZCARD
-- answers both "does the timeline exist" (Redis never keeps an empty ZSET) and "is it at
-- the cap". Presence stays one EXISTS per follower: it is a set of gateway nodes
-- (gateway/presence.py), and MGET would read every set as missing (offline).
local n = #KEYS / 2
local member, cap, payload, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local written, offline = 0, {}
for i = 1, n do
  local timeline, fresh = KEYS[i], true
  local size = redis.call('ZCARD', timeline)
  if size > 0 then
    if redis.call('ZADD', timeline, 0, member) == 1 then
      written = written + 1
      if size >= cap then
        -- size + 1 entries now: drop the oldest size + 1 - cap
        redis.call('ZREMRANGEBYRANK', timeline, 0, size - cap)
      end
    else
      fresh = false
    end
  end
  if redis.call('EXISTS', KEYS[n + i]) == 1 then
    if fresh then redis.call('PUBLISH', prefix .. ARGV[4 + i], payload) end
  else
    offline[#offline + 1] = ARGV[4 + i]
  end
end
return {written, offline}
