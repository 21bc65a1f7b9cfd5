-- A home feed page in one call (server/feed/home.py "fast path"): the timeline page, the
-- celebrity-tier posts of the authors the reader follows, their merge, the unfollow and
-- delete filters and the posts' cached counters, when every cache it needs is warm.
-- Otherwise it answers what the general path (server/feed/home.py HomeFeed._general) goes on
-- from.
--
-- KEYS[1] the reader's timeline (keys.timeline), KEYS[2] their following set
-- (keys.following). Post counters are read by name (@COUNTS@<id>), undeclared: on a
-- single Redis. On a Redis Cluster (its split form) they live on other nodes: the script
-- stops after the merge and returns {2, candidates, more, general} (more: 1 when the
-- page's boundary is set, general: the {0, ...} answer below), or {2, candidates, more,
-- sentinel, flags} when no pull-tier post is among them (the general answer's members
-- are then the candidates, and the sentinel if it is set), and the server reads the
-- counters with one call per node and filters as the stages below do
-- (server/feed/timeline_reads.py).
-- ARGV[1] reader id; ARGV[2] upper lex bound of the timeline ('+' or '(' .. member);
-- ARGV[3] page size; ARGV[4] n, the number of pull-tier authors; ARGV[5 .. 4+n] their
-- ids; optionally ARGV[5+n] and ARGV[6+n], their posts held by the server below the
-- cursor (Celebrities.held): one byte per author, 'c' (every post of theirs is held),
-- 'p' (older ones are in Postgres) or 'x' (too few held for this page); then up to page
-- size + 2 posts per author (one more than a batch takes tells whether more remain) as
-- records of the author's 1-based position and the post's member (@WIDTH@ bytes), all
-- authors merged, newest first.
--
-- Returns {1, counters, ids, has_more}: the page's posts' cached counters (checked to be
-- in the cache's form), ids their timeline members. Or {0, exists, sentinel, members,
-- cached, flags}, the general path's first read: whether the timeline exists, whether
-- the page reaches its sentinel (the end of a complete timeline), the page (page size + 1
-- members), whether the following set is cached and which pull-tier authors it holds.
--
-- `--@stage` lines split the work where scripts/bench/feed_script_cost.py times it
-- (Redis's own time per page, stage by stage).

local W = @WIDTH@
local X, P = string.byte('x'), string.byte('p')
local limit = tonumber(ARGV[3])
local want = limit + 1
local n = tonumber(ARGV[4])

--@stage timeline page
-- One call each for the timeline and the following set in the common case: a page
-- that ends with the sentinel is the end of a complete timeline, and only an empty one
-- may be a missing timeline; the following set, when cached, always holds '0'.
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], '-', 'BYLEX', 'REV', 'LIMIT', 0, want)
local exists, sentinel = 1, 0
if members[#members] == '@SENTINEL@' then
  sentinel = 1
elseif #members == 0 then
  exists = redis.call('EXISTS', KEYS[1])
end
--@stage followed pull-tier authors
local flags = {}
local cached = 0
for first = 5, math.max(5, 4 + n), 1000 do -- chunks: Lua's unpack has a stack limit
  local last = math.min(first + 999, 4 + n)
  local found = redis.call('SMISMEMBER', KEYS[2], '0', unpack(ARGV, first, last))
  cached = found[1]
  if cached == 0 then break end
  for k = 2, #found do flags[#flags + 1] = found[k] end
end
local general = {0, exists, sentinel, members, cached, flags}
if exists == 0 or cached == 0 then return general end

--@stage timeline batch
-- The timeline's batch: a short page is the end only when the timeline is complete
-- (older history continues in Postgres otherwise).
local timeline = {}
for _, m in ipairs(members) do
  if m ~= '@SENTINEL@' then timeline[#timeline + 1] = m end
end
local timeline_done = #timeline < want
if timeline_done and sentinel == 0 then return general end

--@stage pull-tier batch
-- The followed pull-tier authors' batch, from what the server holds. It is the end of
-- their posts when it holds no more than `want` and nothing older is left in Postgres.
local kinds, merged = ARGV[5 + n], ARGV[6 + n]
local celebs, celebs_done, any = {}, true, false
for i = 1, n do
  if flags[i] == 1 then
    if not merged then return general end
    local kind = string.byte(kinds, i)
    if kind == X then return general end -- older posts may belong on this page
    if kind == P then celebs_done = false end
    any = true
  end
end
if any then
  for at = 1, #merged, W + 1 do
    if flags[string.byte(merged, at)] == 1 then
      celebs[#celebs + 1] = string.sub(merged, at + 1, at + W)
      if #celebs > want then break end -- one more than the batch: more remain
    end
  end
end
celebs_done = celebs_done and #celebs <= want

--@stage merge
-- Nothing below a batch's last member is taken until that batch is read further.
local boundary = ''
if not timeline_done and #timeline > 0 then boundary = timeline[#timeline] end
if not celebs_done and celebs[want] > boundary then boundary = celebs[want] end
-- Both batches are newest first: merged in one pass, without duplicates.
local candidates, i, j = {}, 1, 1
while true do
  local a, b, m = timeline[i], celebs[j], nil
  if a and (not b or a >= b) then
    m, i = a, i + 1
    if a == b then j = j + 1 end
  elseif b then
    m, j = b, j + 1
  else
    break
  end
  if m < boundary then break end
  candidates[#candidates + 1] = m
end
if @SPLIT@ then
  -- Without pull-tier posts the candidates are the page's timeline members: the server
  -- makes the general answer from them, instead of their crossing out of Lua twice.
  local more = boundary ~= '' and 1 or 0
  if #celebs == 0 then return {2, candidates, more, sentinel, flags} end
  return {2, candidates, more, general}
end

--@stage counters
-- The candidates' counters in one MGET: "author,likes,reposts,replies", or '-' for a
-- deleted post (core/post_cache.py). A miss or a value that is not ours sends the page to
-- the general path (which reads Postgres and fills the cache). Bodies are not read here:
-- they never change, so the server holds them (server/held_bodies.py), and each body
-- read here would be copied into a Lua string and out again.
local c = #candidates
local names = {}
for j = 1, c do
  names[j] = '@COUNTS@' .. string.match(candidates[j], '^0*(%d+)$')
end
local values = c > 0 and redis.call('MGET', unpack(names)) or {}
local kept, others, other_at = {}, {}, {}
for j = 1, c do
  local counter = values[j]
  if not counter then return general end
  if counter ~= '-' then
    local author = string.match(counter, '^(%d+),%-?%d+,%-?%d+,%-?%d+$')
    if not author then return general end
    local k = #kept + 1
    kept[k] = j
    if author ~= ARGV[1] then
      others[#others + 1] = author
      other_at[#others] = k
    end
  end
end
--@stage unfollow filter
local visible = {}
for k = 1, #kept do visible[k] = true end
if #others > 0 then
  local followed = redis.call('SMISMEMBER', KEYS[2], unpack(others))
  for i = 1, #others do
    if followed[i] == 0 then visible[other_at[i]] = false end
  end
end

--@stage reply
-- Counters go back as they are (the server splices the counts into the bodies): new
-- strings made here cost Redis's single thread, and its garbage collector, more.
local counters, ids, live = {}, {}, 0
for k = 1, #kept do
  if visible[k] then
    live = live + 1
    if live <= limit then
      local j = kept[k]
      counters[live] = values[j]
      ids[live] = candidates[j]
    end
  end
end
if live < limit and boundary ~= '' then return general end -- more rounds needed
local has_more = (boundary ~= '' or live > limit) and 1 or 0
return {1, counters, ids, has_more}
