-- Media (issue 25): one row per upload started by POST /v1/media. The client PUTs the
-- bytes to the object store at `upload_key`; the media worker (server/media_worker.py)
-- looks for them there (at `next_check_at`, backing off), re-encodes them without any
-- metadata to `image_key` and `preview_key`, deletes the upload, and records the outcome;
-- and it deletes media never attached and those of deleted posts (`purge_after`).
CREATE TABLE media (
    id                bigint      PRIMARY KEY,
    owner_id          bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content_type      text        NOT NULL,
    size              bigint      NOT NULL CHECK (size > 0),
    status            text        NOT NULL DEFAULT 'processing'
                                  CHECK (status IN ('processing', 'ready', 'failed')),
    reason            text,
    upload_key        text        NOT NULL,
    upload_expires_at timestamptz NOT NULL,
    next_check_at     timestamptz NOT NULL DEFAULT now(),
    checks            integer     NOT NULL DEFAULT 0,
    image_key         text,
    preview_key       text,
    width             integer,
    height            integer,
    blurhash          text,
    alt_text          text        NOT NULL DEFAULT '',
    post_id           bigint      REFERENCES posts (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz,
    -- When the worker deletes it (objects and row): 24 h after creation while attached to
    -- no post, cleared when attached, set to now() when its post is deleted.
    purge_after       timestamptz,
    CHECK (status <> 'failed' OR reason IS NOT NULL),
    CHECK (status <> 'ready' OR (image_key IS NOT NULL AND width > 0 AND height > 0))
);

-- The upload rate and the quota read one user's media.
CREATE INDEX media_owner_created ON media (owner_id, created_at);
CREATE INDEX media_post ON media (post_id) WHERE post_id IS NOT NULL;
-- The worker's queue: uploads not processed yet, by when to look next.
CREATE INDEX media_due ON media (next_check_at) WHERE status = 'processing';
-- The worker's sweep: media to delete, by when.
CREATE INDEX media_purge ON media (purge_after) WHERE purge_after IS NOT NULL;
