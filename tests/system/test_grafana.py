"""The Grafana dashboard and the Prometheus config for Docker users must not drift from the
code: every metric a panel queries is defined by one of our services (or is a standard
process metric of prometheus_client), and Prometheus scrapes every service."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, ProcessCollector

from tests.support.env import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "feed.json"
PACKAGES = ("core", "server", "gateway", "fanout", "push")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")

DEFINITION = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][\w:]*)\"")
# PromQL pieces that are not metric names: label matchers, groupings, ranges, strings.
NOT_NAMES = re.compile(
    r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    r"|\[[^\]]*\]|\"[^\"]*\""
)
IDENTIFIER = re.compile(r"[a-zA-Z_:][\w:]*(?=\s*(\(?))")
KEYWORDS = {"by", "without", "on", "ignoring", "and", "or", "unless", "offset", "bool"}


def defined_metrics() -> set[str]:
    """Metric names our Python sources define, with the series names they expose."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names.update(DEFINITION.findall(path.read_text()))
    assert {"gateway_connections", "fanout_consumer_lag", "feed_timeline_reads"} <= names
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # what core.service registers in every process
    names.update(m.name for m in registry.collect())
    names.add("feed_service_info")
    return names


def referenced_metrics(expr: str) -> set[str]:
    stripped = NOT_NAMES.sub(" ", expr)
    found = set()
    for match in IDENTIFIER.finditer(stripped):
        name, call = match.group(0), match.group(1)
        if call or name in KEYWORDS or name.isdigit():
            continue  # a function (histogram_quantile, sum, rate, ...) or an operator
        found.add(name)
    return found


def exposed_as(name: str, defined: set[str]) -> bool:
    if name in defined:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in defined for s in SUFFIXES)


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for item in node for e in expressions(item)]
    return []


def test_the_parser_finds_metric_names_only() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(feed_http_request_seconds_bucket"
        '{method="GET", route="/v1/feed"}[1m]))) / sum(fanout_consumer_lag) or up'
    )
    assert referenced_metrics(expr) == {
        "feed_http_request_seconds_bucket",
        "fanout_consumer_lag",
        "up",
    }


def test_every_metric_in_the_grafana_dashboard_exists_in_the_code() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard["panels"])
    assert len(exprs) > 30
    defined = defined_metrics()
    referenced = {name for expr in exprs for name in referenced_metrics(expr)}
    missing = sorted(name for name in referenced if not exposed_as(name, defined))
    assert missing == [], f"feed.json queries metrics no service defines: {missing}"
    # The panels the ops dashboard has must be there too.
    for metric in (
        "gateway_connections",
        "gateway_users",
        "gateway_messages_delivered_total",
        "gateway_post_to_socket_seconds_bucket",
        "fanout_consumer_lag",
        "fanout_timeline_writes_total",
        "push_outcomes_total",
        "push_send_seconds_bucket",
        "feed_http_request_seconds_bucket",
        "feed_timeline_reads_total",
    ):
        assert metric in referenced, metric


def test_every_panel_uses_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    """Single node or clustered profile: every compose service running one of the four
    modules answers to the DNS name its module's job scrapes (its own name, or a network
    alias), and Prometheus waits for none of them (with the cluster profile it runs beside
    the clustered nodes, not the single-node ones)."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    scraped = {
        job["job_name"]: (sd["names"], sd["port"])
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    assert scraped == {
        "server": (["server"], 8080),
        "gateway": (["gateway"], 8081),
        "fanout": (["fanout"], 8082),
        "push": (["push"], 8083),
    }
    running: dict[str, list[str]] = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["python", "-m"] and command[2] in scraped:
            aliases = service.get("networks", {}).get("default", {}).get("aliases", [])
            running.setdefault(command[2], []).append(name)
            assert scraped[command[2]][0][0] in [name, *aliases], name
    assert {m: len(n) for m, n in running.items()} == dict.fromkeys(scraped, 3), running
    assert "depends_on" not in compose["services"]["prometheus"]
    assert {"prometheus", "grafana"} <= set(compose["services"])
