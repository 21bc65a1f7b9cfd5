-- A reader's home feed posts (server/feed/hydrate.py Hydrator.for_reader): KEYS n posts'
-- counters, then the reader's following set (keys.following); ARGV[1] the reader's id.
-- Returns the n counters (false when missing), then per post whether the reader follows
-- its author (or is the author): 1 yes, 0 no, -1 cannot tell here (no cached counters,
-- or no cached following set).
local n = #KEYS - 1
local following = KEYS[#KEYS]
local out = redis.call('MGET', unpack(KEYS, 1, n))
local cached = redis.call('EXISTS', following) == 1
local authors, at = {}, {}
for i = 1, n do
  local counters = out[i]
  local flag = -1
  if counters and cached then
    local author = string.match(counters, '^(%d+),')
    if author == ARGV[1] then
      flag = 1
    elseif author then
      authors[#authors + 1] = author
      at[#authors] = n + i
      flag = 0
    end
  end
  out[n + i] = flag
end
if #authors > 0 then
  local followed = redis.call('SMISMEMBER', following, unpack(authors))
  for j = 1, #authors do out[at[j]] = followed[j] end
end
return out
