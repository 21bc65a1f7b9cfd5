import pytest

from core.settings import DEFAULT_DATABASE_URL, Settings, SettingsError, mask_url


def test_defaults_point_at_the_local_stack() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.server_port == 8080
    assert settings.gateway_port == 8081
    assert settings.fanout_push_max == 100_000
    assert settings.fanout_throttle_max == 1_000_000
    assert settings.timeline_cap == 800


def test_environment_overrides_and_types() -> None:
    settings = Settings.from_env(
        {"SERVER_PORT": "9000", "FANOUT_BATCH_SIZE": "5_000", "SHUTDOWN_TIMEOUT": "2.5"}
    )
    assert settings.server_port == 9000
    assert settings.fanout_batch_size == 5000
    assert settings.shutdown_timeout == 2.5


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.server_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVER_PORT": "eighty"}, "SERVER_PORT must be an integer, got 'eighty'"),
        ({"SERVER_PORT": "70000"}, "SERVER_PORT must be a TCP port"),
        ({"FANOUT_PUSH_MAX": "10", "FANOUT_THROTTLE_MAX": "5"}, "FANOUT_PUSH_MAX must not exceed"),
        ({"DB_POOL_MIN": "30", "DB_POOL_MAX": "20"}, "DB_POOL_MIN must not exceed"),
        (
            {"KAFKA_REPLICATION_FACTOR": "3", "KAFKA_MIN_INSYNC_REPLICAS": "4"},
            "KAFKA_MIN_INSYNC_REPLICAS must not exceed KAFKA_REPLICATION_FACTOR",
        ),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be at least 16"),
        ({"TIMELINE_CAP": "0"}, "TIMELINE_CAP must be positive"),
        ({"TIMELINE_TRIM_SLACK": "-1"}, "TIMELINE_TRIM_SLACK must not be negative"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_secrets_and_url_passwords_never_in_repr() -> None:
    settings = Settings.from_env(
        {
            "SECRET_KEY": "super-secret-signing-key-123",
            "OPERATOR_TOKEN": "op-token-xyz",
            "DATABASE_URL": "postgresql://app:hunter2@db:5432/feed",
            "REDIS_URL": "redis://:redispass@cache:6379/0",
            "FCM_CREDENTIALS": '{"private_key": "-----BEGIN PRIVATE KEY-----fcmkey"}',
        }
    )
    text = repr(settings) + str(settings)
    secrets = ("super-secret-signing-key-123", "op-token-xyz", "hunter2", "redispass", "fcmkey")
    for secret in secrets:
        assert secret not in text
    assert "postgresql://app:***@db:5432/feed" in text


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("postgresql://u:p@h/d") == "postgresql://u:***@h/d"


def test_the_wire_fast_paths_are_on_by_default_and_can_be_switched_off() -> None:
    defaults = Settings.from_env({})
    assert defaults.feed_fast_path and defaults.gateway_native_websocket
    off = Settings.from_env({"FEED_FAST_PATH": "false", "GATEWAY_NATIVE_WEBSOCKET": "off"})
    assert not off.feed_fast_path and not off.gateway_native_websocket
    with pytest.raises(SettingsError, match="FEED_FAST_PATH"):
        Settings.from_env({"FEED_FAST_PATH": "maybe"})
