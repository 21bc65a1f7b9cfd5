-- Adds one post to a batch of followers' home timelines and publishes it live to those
-- who are online, atomically per batch. Serialized once by the caller (ARGV[4]).
--
-- KEYS[1..n]     timeline keys (tl:{uid})      KEYS[n+1..2n] presence keys (online:{uid})
-- ARGV[1] member (zero-padded post id)  ARGV[2] cap  ARGV[3] trim limit (cap + slack)
-- ARGV[4] live event payload  ARGV[5] publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[6], ARGV[7] what goes before and after a follower id in their channel ("u:{", "}")
-- ARGV[8] one byte per follower, "1" where they have a push device, else "0"
-- ARGV[9..8+n] follower ids, same order as KEYS
-- With no KEYS, the 2n keys follow the ids in ARGV instead (Redis Cluster: one call per
-- node, whose followers hash to many slots, so their keys cannot be declared; see
-- fanout/writer.py).
-- On a cluster a follower's channel shares the slot of their timeline (core/keys.py), so
-- SPUBLISH reaches only this node's subscribers, and a slot this node no longer serves
-- fails the script at that follower's ZCARD, before anything is published for them.
--
-- Only timelines that exist are written (core/timelines.py): a missing one is rebuilt when its
-- owner reads it, so writing into it would make a partial timeline look complete.
-- A replay (the member is already there) publishes nothing again.
-- Returns {timelines written, live publishes, {offline follower ids with a device}}.
--
-- This loop is fan-out's hot path; each redis.call costs about 1 us, so:
-- * one ZCARD answers both "does the timeline exist" (Redis never keeps an empty ZSET)
--   and "is it due a trim";
-- * a timeline grows to the trim limit and is then cut back to the cap in one call,
--   instead of one ZREMRANGEBYRANK per write once it is full;
-- * presence is asked with one EXISTS per chunk of followers (most are offline), and
--   per follower only in a chunk where someone is online. Presence is a set of gateway
--   nodes (gateway/presence.py): MGET would read every set as missing (offline);
-- * only offline followers with a device are returned: the others get nothing anyway,
--   and returning every offline id cost more than the timeline write itself.
local K, at, n = KEYS, 0, #KEYS / 2
if n == 0 then
  n = (#ARGV - 8) / 3
  K, at = ARGV, 8 + n
end
local member, cap, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local payload, publish, prefix, suffix, devices = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local written, published, offline = 0, 0, {}
-- One command's keys must share a slot even inside a script, so with undeclared keys
-- (a cluster) presence is asked one follower at a time.
local CHUNK = at == 0 and 16 or 1
for first = 1, n, CHUNK do
  local last = math.min(first + CHUNK - 1, n)
  local anyone_online = redis.call('EXISTS', unpack(K, at + n + first, at + n + last)) > 0
  for i = first, last do
    local timeline, fresh = K[at + i], true
    local size = redis.call('ZCARD', timeline)
    if size > 0 then
      if redis.call('ZADD', timeline, 0, member) == 1 then
        written = written + 1
        if size >= limit then
          -- size + 1 entries now: keep the newest cap
          redis.call('ZREMRANGEBYRANK', timeline, 0, size - cap)
        end
      else
        fresh = false
      end
    end
    if anyone_online and (CHUNK == 1 or redis.call('EXISTS', K[at + n + i]) == 1) then
      if fresh then
        redis.call(publish, prefix .. ARGV[8 + i] .. suffix, payload)
        published = published + 1
      end
    elseif string.byte(devices, i) == 49 then -- "1"
      offline[#offline + 1] = ARGV[8 + i]
    end
  end
end
return {written, published, offline}
