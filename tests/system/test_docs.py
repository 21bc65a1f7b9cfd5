"""The README and docker-compose.yml must not drift from the settings the code reads."""

import dataclasses

import yaml

from core.settings import Settings
from tests.support.env import ROOT


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f.name.upper() for f in dataclasses.fields(Settings) if f"`{f.name.upper()}" not in readme
    ]
    assert missing == []


def test_compose_runs_every_service_with_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "kafka",
        "bootstrap",
        "server",
        "gateway",
        "fanout",
        "push",
    } <= set(services)
    known = {f.name.upper() for f in dataclasses.fields(Settings)}
    for name in ("server", "gateway", "fanout", "push", "bootstrap"):
        env = services[name]["environment"]
        assert set(env) <= known, f"{name} sets unknown variables {set(env) - known}"
        assert services[name]["command"][-1] in {name, "core.bootstrap"}
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_every_close_code_is_documented_in_the_readme() -> None:
    from gateway.codes import RECONNECT, Close

    readme = (ROOT / "README.md").read_text()
    assert set(RECONNECT) == set(Close)
    missing = [code.value for code in Close if f"| {code.value} |" not in readme]
    assert missing == []
