-- Ranked feed (issue 26): what readers were shown on ranked first pages, with the feature
-- vector the model scored, so `python -m ranking.train --from-database` fits the next
-- model on real impressions. Labels are not stored: an impression is positive when the
-- reader liked, replied to or reposted the post within a day of seeing it (likes and
-- posts say so), which is only final a day later. Written in batches by each API server
-- (ranking/impressions.py); rows older than RANKING_IMPRESSIONS_DAYS are deleted.
CREATE TABLE ranking_impressions (
    reader_id     bigint      NOT NULL,
    post_id       bigint      NOT NULL,
    page          bigint      NOT NULL,  -- the ranked page's snapshot token: one session
    position      smallint    NOT NULL,  -- 0 = top of the page
    shown_at      timestamptz NOT NULL,
    model_version text        NOT NULL,
    features      real[]      NOT NULL
);
-- Training reads a time range; the sweep deletes by age.
CREATE INDEX ranking_impressions_shown ON ranking_impressions (shown_at);
