-- The post rate limit counts an author's recent posts including deleted ones (deleting
-- must not refill the allowance), so the author index cannot be partial.
DROP INDEX posts_author;
CREATE INDEX posts_author ON posts (author_id, id DESC);
-- Celebrity-tier authors are found by follower count at read time.
CREATE INDEX users_follower_count ON users (follower_count DESC);
