-- Drops a user's following set after a follow or unfollow, with a fresh version token
-- so that a fill that read Postgres before the change stores nothing
-- (server/feed/following.py).
-- KEYS[1] following set, KEYS[2] version token; ARGV[1] new token, ARGV[2] its ttl.
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[1])
return 1
