-- Newest live posts of one author, read in index order without visiting the heap: the
-- celebrity merge of the home feed and profile timelines. posts_author (not partial, for
-- the rate limit) needs a heap visit per row to skip deleted posts, so the planner sorts
-- every post of the author instead (measured: 4 ms -> 0.3 ms per feed read).
CREATE INDEX posts_author_live ON posts (author_id, id DESC) WHERE deleted_at IS NULL;
