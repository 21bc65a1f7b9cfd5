"""What happened around a measured window besides our requests: did the shared Redis
restart (it keeps nothing on disk, so every timeline is gone), and where did the server
read timelines from (its feed_timeline_reads metric: redis, rebuild or postgres)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections import Counter

import redis

_READS = re.compile(r'^feed_timeline_reads_total\{source="(\w+)"\} ([\d.e+]+)$', re.M)


def redis_run_id(url: str) -> str:
    """Changes whenever the Redis process restarts."""
    with redis.Redis.from_url(url) as client:
        return str(client.info("server")["run_id"])


def timeline_reads(base_url: str) -> Counter[str]:
    """Timeline reads by source so far; empty if the server does not export the metric."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:  # noqa: S310
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return Counter()
    return Counter({m.group(1): int(float(m.group(2))) for m in _READS.finditer(text)})


def redis_commands(url: str) -> int:
    """Commands the Redis server has processed since it started, from every client: a
    window where it ran far more than our load needs means someone else was using it."""
    with redis.Redis.from_url(url) as client:
        return int(client.info("stats")["total_commands_processed"])
