"""The home feed: timelines read from Redis (and rebuilt from Postgres), hydration of
post bodies, the following cache, celebrity (pull-tier) merging, and the ranked feed."""
