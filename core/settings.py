"""Settings: parsed once from the environment at an entry point, then passed down.

Nothing below an entry point reads os.environ. Secrets and URL passwords never appear
in repr() or logs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Local development defaults point at the stack that scripts/stack.py starts.
DEFAULT_DATABASE_URL = "postgresql://feed:feed@127.0.0.1:55432/feed"
DEFAULT_REDIS_URL = "redis://127.0.0.1:56379/0"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:59092"
DEFAULT_S3_ENDPOINT = "http://127.0.0.1:59000"
DEV_SECRET = "dev-only-secret-change-me"  # noqa: S105 - documented development default

_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def mask_url(url: str) -> str:
    """Hide the password part of a URL so it can be logged."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def _secret(default: str) -> Any:
    return field(default=default, metadata={"secret": True})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, its environment variable and default are documented in README.md."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    # On a cluster with replicas, fan-out's WAIT 1 after each batch (fanout/writer.py).
    redis_replica_wait_ms: int = 100
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    kafka_topic_prefix: str = ""
    kafka_partitions: int = 6
    # Topics created by core.bootstrap: copies of each partition, and how many must have
    # a write before Kafka acknowledges it (producers use acks=all). The local stack is
    # one broker (1/1); a replicated cluster runs 3/2, so one broker may die unnoticed.
    kafka_replication_factor: int = 1
    kafka_min_insync_replicas: int = 1

    host: str = "127.0.0.1"
    server_port: int = 8080
    gateway_port: int = 8081
    fanout_port: int = 8082
    push_port: int = 8083

    secret_key: str = _secret(DEV_SECRET)
    operator_token: str = _secret("dev-operator-token")
    token_ttl_seconds: int = 7 * 24 * 3600

    db_pool_min: int = 1
    db_pool_max: int = 20
    # A streaming replica of DATABASE_URL (core/replica.py): fan-out's follower pages,
    # timeline rebuilds, the feed's Postgres fallback, profile timelines and search
    # read from it, as fresh as the primary (a read waits for the replica to replay the
    # primary's position, up to 50 ms, else runs on the primary). Empty: all reads go to
    # the primary. Its pool has DB_POOL_MAX connections at most, opened on demand.
    database_read_url: str = ""
    redis_max_connections: int = 200
    startup_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    # An idle keep-alive connection, or one whose next request head is still arriving,
    # is closed after this long (nginx's default; aiohttp's own is an hour).
    http_keepalive_seconds: float = 75.0
    log_level: str = "INFO"

    gateway_api_url: str = "http://127.0.0.1:8080"
    # Gateway URL the web client connects to; empty: the page's host on GATEWAY_PORT.
    public_stream_url: str = ""
    gateway_allowed_origins: str = "*"
    gateway_max_connections_per_user: int = 10
    gateway_queue_messages: int = 1000
    gateway_queue_bytes: int = 1024 * 1024
    gateway_ping_seconds: float = 25.0
    gateway_connects_per_ip: float = 20.0
    presence_ttl_seconds: int = 60

    fanout_push_max: int = 100_000
    fanout_throttle_max: int = 1_000_000
    fanout_batch_size: int = 10_000
    fanout_throttle_rate: int = 50_000
    fanout_group: str = "fanout"
    fanout_offset_reset: str = "earliest"
    fanout_active_days: int = 30
    timeline_cap: int = 800
    # Fan-out lets a timeline grow this far past the cap, then trims back to it in one
    # go: trimming on every write costs ~1 us of Redis per follower at the cap.
    timeline_trim_slack: int = 64
    # Post bodies each API server process holds in memory for feed pages (~0.5 KB each).
    feed_held_posts: int = 50_000
    # Incident switches for the hand-written wire code (true: on, the default).
    # FEED_FAST_PATH: the API server answers plain GET /v1/feed itself (server/http/fast_feed.py,
    # about a quarter of its CPU per page); false: every request goes through aiohttp's
    # handlers, middleware and router, with the same answers.
    feed_fast_path: bool = True
    # GATEWAY_NATIVE_WEBSOCKET: the gateway upgrades WebSockets itself
    # (gateway/protocols/, ~2 KiB instead of ~18 per connection); false: aiohttp's
    # WebSocketResponse serves every connection (gateway/endpoints.py), same protocol.
    gateway_native_websocket: bool = True

    # The ranked feed (GET /v1/feed?algorithm=ranked, ranking/). RANKING_MODEL_PATH: the
    # model file, reloaded when it changes; empty: the shipped ranking/model.json; a path
    # with no file: every ranked request is served chronologically (and says so).
    ranking_model_path: str = ""
    # A first ranked page not ready within this budget (ms) is served chronologically.
    ranking_budget_ms: int = 50
    # Candidates re-ranked: the newest this many posts of the home feed, no older than
    # RANKING_WINDOW_HOURS.
    ranking_candidates: int = 300
    ranking_window_hours: int = 72
    # How long the ranked list a first page made stays in Redis for its later pages.
    ranking_snapshot_seconds: int = 1800
    # After this many ranker failures in a row (errors, over budget), ranked requests are
    # served chronologically without trying for RANKING_BREAKER_SECONDS.
    ranking_breaker_failures: int = 5
    ranking_breaker_seconds: float = 30.0
    # Impressions of ranked first pages kept in Postgres for `python -m ranking.train
    # --from-database` (ranking/impressions.py): false logs none; older ones are deleted.
    ranking_log_impressions: bool = True
    ranking_impressions_days: int = 30

    # Push (push/). APNs token auth: the .p8 key as PEM text or a file path.
    apns_key: str = _secret("")
    apns_key_file: str = ""
    apns_key_id: str = ""
    apns_team_id: str = ""
    apns_topic: str = "com.example.feed"
    apns_url: str = "https://api.push.apple.com"
    # Android through FCM HTTP v1: a Google service-account key (the JSON file Firebase's
    # console gives) as JSON text or a file path; empty: FCM devices are not pushed to.
    # Its `token_uri` is where OAuth 2.0 access tokens are minted.
    fcm_credentials: str = _secret("")
    fcm_credentials_file: str = ""
    # The Firebase project messages are sent through; empty: the key's `project_id`.
    fcm_project_id: str = ""
    # Origin of the FCM v1 API (the test stand-in's in tests and the demo).
    fcm_url: str = "https://fcm.googleapis.com"
    # Extra CA bundle trusted for APNs, FCM and Web Push (the stand-ins' CA); empty = system.
    push_ca_file: str = ""
    vapid_subject: str = "mailto:ops@example.com"
    push_timeout_seconds: float = 5.0
    push_feed_window_seconds: int = 60
    push_feed_ttl_seconds: int = 3600
    push_alert_ttl_seconds: int = 86_400
    push_concurrency: int = 64
    push_group: str = "push"
    push_offset_reset: str = "earliest"
    # Web Push endpoints must be https on a public address; loopback only for tests.
    push_allow_loopback: bool = False

    # Media (issue 25): images uploaded by the client straight to an S3-compatible store
    # through pre-signed PUTs (AWS S3, MinIO, R2, ...; locally scripts/stack.py's s3proxy).
    s3_endpoint: str = DEFAULT_S3_ENDPOINT
    s3_bucket: str = "feed-media"
    s3_region: str = "us-east-1"
    s3_access_key: str = _secret("feed-local")
    s3_secret_key: str = _secret("feed-local-secret")
    # Public base URL of the bucket's objects (a CDN in production); empty: the store's
    # own path-style URL, S3_ENDPOINT/S3_BUCKET.
    media_public_url: str = ""
    # Refused at POST /v1/media: larger declared sizes; more uploads per user per hour;
    # a user whose stored media (every upload not failed) would pass MEDIA_QUOTA_BYTES.
    media_max_bytes: int = 8 * 1024 * 1024
    media_uploads_per_hour: int = 60
    media_quota_bytes: int = 1024 * 1024 * 1024
    # Refused when processing: images with more pixels than this (decompression bombs).
    media_max_pixels: int = 16_000_000
    # How long a pre-signed upload URL stays valid.
    media_upload_ttl_seconds: int = 900

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                shown = "'***'"
            elif isinstance(value, str) and "://" in value:
                shown = repr(mask_url(value))
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables named after the fields in upper case."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.name.upper()
            raw = source.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("server_port", "gateway_port", "fanout_port", "push_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{name.upper()} must be a TCP port (0-65535), got {port}")
        for small, large in NOT_ABOVE:
            if getattr(self, small) > getattr(self, large):
                raise SettingsError(f"{small.upper()} must not exceed {large.upper()}")
        if len(self.secret_key) < 16:
            raise SettingsError("SECRET_KEY must be at least 16 characters")
        positive = (
            "kafka_partitions",
            "kafka_replication_factor",
            "kafka_min_insync_replicas",
            "fanout_batch_size",
            "fanout_throttle_rate",
            "timeline_cap",
            "token_ttl_seconds",
            "push_timeout_seconds",
            "push_feed_window_seconds",
            "push_feed_ttl_seconds",
            "push_alert_ttl_seconds",
            "push_concurrency",
            "http_keepalive_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")
        self._validate_ranking()
        self._validate_media()
        for name in ("feed_held_posts", "timeline_trim_slack", "redis_replica_wait_ms"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name.upper()} must not be negative")
        for name in ("fanout_offset_reset", "push_offset_reset"):
            if getattr(self, name) not in ("earliest", "latest"):
                raise SettingsError(f"{name.upper()} must be earliest or latest")

    def _validate_media(self) -> None:
        for name in (
            "media_max_bytes",
            "media_uploads_per_hour",
            "media_quota_bytes",
            "media_max_pixels",
            "media_upload_ttl_seconds",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")
        if not self.s3_endpoint.startswith(("http://", "https://")):
            raise SettingsError("S3_ENDPOINT must be an http:// or https:// URL")
        # SigV4 pre-signed URLs are valid for at most 7 days.
        if self.media_upload_ttl_seconds > 7 * 86_400:
            raise SettingsError("MEDIA_UPLOAD_TTL_SECONDS must be at most 604800 (7 days)")

    def _validate_ranking(self) -> None:
        for name in (
            "ranking_budget_ms",
            "ranking_candidates",
            "ranking_window_hours",
            "ranking_snapshot_seconds",
            "ranking_breaker_failures",
            "ranking_breaker_seconds",
            "ranking_impressions_days",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")


# Pairs of settings where the first may not exceed the second.
NOT_ABOVE = (
    ("fanout_push_max", "fanout_throttle_max"),
    ("db_pool_min", "db_pool_max"),
    # More in-sync replicas than copies: no write could ever be acknowledged.
    ("kafka_min_insync_replicas", "kafka_replication_factor"),
)


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    expected = {"int": "an integer", "float": "a number", "bool": "true or false"}
    try:
        if kind_name == "int":
            return int(raw.replace("_", ""))
        if kind_name == "float":
            return float(raw)
        if kind_name == "bool":
            return _parse_bool(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {expected[kind_name]}, got {raw!r}") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)
