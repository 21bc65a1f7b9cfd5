-- Source of truth for accounts, the social graph, posts and the events still to publish.
-- Ids are time-ordered 64-bit integers from core/ids.py (never serial), so the same id
-- travels unchanged through Postgres, Kafka, Redis and the API.

CREATE TABLE users (
    id               bigint PRIMARY KEY,
    handle           text        NOT NULL CHECK (handle ~ '^[A-Za-z0-9_]{1,15}$'),
    display_name     text        NOT NULL DEFAULT '',
    password_hash    text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_active_at   timestamptz NOT NULL DEFAULT now(),
    follower_count   bigint      NOT NULL DEFAULT 0,
    following_count  bigint      NOT NULL DEFAULT 0,
    post_count       bigint      NOT NULL DEFAULT 0,
    -- NULL: tier chosen by follower count; otherwise an operator's override.
    fanout_tier      text CHECK (fanout_tier IN ('push', 'throttle', 'pull'))
);
-- Handles are unique case-insensitively but displayed as typed.
CREATE UNIQUE INDEX users_handle_lower ON users (lower(handle));
CREATE INDEX users_last_active ON users (last_active_at);

CREATE TABLE follows (
    follower_id  bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id  bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);
-- Fan-out streams an author's followers by keyset pagination on this index.
CREATE INDEX follows_followee ON follows (followee_id, follower_id);

CREATE TABLE posts (
    id            bigint PRIMARY KEY,
    author_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    text          text        NOT NULL,
    reply_to      bigint REFERENCES posts (id),
    repost_of     bigint REFERENCES posts (id),
    media_ids     bigint[]    NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    like_count    bigint      NOT NULL DEFAULT 0,
    repost_count  bigint      NOT NULL DEFAULT 0,
    reply_count   bigint      NOT NULL DEFAULT 0,
    -- 'simple' (no stemming) because posts come in every language.
    search        tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX posts_author ON posts (author_id, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX posts_reply_to ON posts (reply_to, id) WHERE reply_to IS NOT NULL;
CREATE INDEX posts_repost_of ON posts (repost_of) WHERE repost_of IS NOT NULL;
CREATE INDEX posts_search ON posts USING gin (search);

CREATE TABLE likes (
    post_id     bigint      NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX likes_user ON likes (user_id, created_at DESC);

CREATE TABLE devices (
    id               bigint PRIMARY KEY,
    user_id          bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind             text        NOT NULL CHECK (kind IN ('apns', 'webpush')),
    -- APNs device token, or the Web Push endpoint URL.
    token            text        NOT NULL,
    p256dh           text,
    auth             text,
    enabled          boolean     NOT NULL DEFAULT true,
    disabled_reason  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'apns' OR (p256dh IS NOT NULL AND auth IS NOT NULL))
);
-- A token registered again moves to its new owner instead of being duplicated.
CREATE UNIQUE INDEX devices_token ON devices (kind, token);
CREATE INDEX devices_user ON devices (user_id) WHERE enabled;

CREATE TABLE notifications (
    id          bigint PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text        NOT NULL CHECK (kind IN ('like', 'reply', 'follow', 'mention', 'repost')),
    actor_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id     bigint REFERENCES posts (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user ON notifications (user_id, id DESC);
-- Replayed engagement events must not notify twice.
CREATE UNIQUE INDEX notifications_dedup
    ON notifications (user_id, kind, actor_id, coalesce(post_id, 0));

-- Transactional outbox: written in the same transaction as the change it describes,
-- published to Kafka by the relay, then marked sent.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea       NOT NULL,
    payload     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE TABLE idempotency_keys (
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key         text        NOT NULL,
    response    bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Worker ids for core/ids.py, leased so no two live processes share one.
CREATE TABLE id_worker_leases (
    worker_id   integer PRIMARY KEY CHECK (worker_id BETWEEN 0 AND 1023),
    holder      text        NOT NULL DEFAULT '',
    generation  bigint      NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    high_water  timestamptz NOT NULL DEFAULT to_timestamp(0)
);
INSERT INTO id_worker_leases (worker_id) SELECT generate_series(0, 1023);
