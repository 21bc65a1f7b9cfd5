"""The fan-out benchmark's markdown: one table of rates against the raw ZADD ceiling and
the target, one of where the time went, and everything needed to reproduce the run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scripts.bench.fanout_ceiling import LayerRate, ZaddCeiling
from scripts.bench.fanout_common import TARGET_WRITES_PER_SECOND
from scripts.bench.fanout_scenarios import Result

CPU_GROUPS = ("worker", "redis", "postgres", "kafka", "bench", "other")
TARGET = f"vs target ({TARGET_WRITES_PER_SECOND:,}/s)"


@dataclass(slots=True)
class Report:
    title: str
    command: str
    machine: str
    busy_before: float  # percent of one core in use just before measuring
    dataset: str
    settings: dict[str, str]
    notes: list[str] = field(default_factory=list)
    ceilings: list[ZaddCeiling] = field(default_factory=list)
    layers: list[LayerRate] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    @property
    def reference(self) -> ZaddCeiling | None:
        """The ceiling most like a timeline write: a new member into an existing ZSET."""
        return self.ceilings[-1] if self.ceilings else None


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio(rate: float, reference: ZaddCeiling | None) -> str:
    return f"{100.0 * rate / reference.per_second:.0f}%" if reference else "n/a"


def _verdict(rate: float) -> str:
    if rate >= TARGET_WRITES_PER_SECOND:
        return "meets it"
    return f"{rate / TARGET_WRITES_PER_SECOND:.2f}x"


def _rates_table(report: Report) -> list[str]:
    ref = report.reference
    lines = [_row("what", "volume", "time", "rate", "vs ZADD ceiling", TARGET)]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for c in report.ceilings:
        rate = f"{c.per_second:,.0f} ZADD/s"
        lines.append(_row(f"raw Redis: {c.label}", "", "", rate, _ratio(c.per_second, ref), ""))
    for x in report.layers:
        unit = "rows" if x.label == "follower query" else "writes"
        lines.append(
            _row(
                f"alone: {x.label}",
                f"{x.items:,} {unit}",
                f"{x.seconds:.2f} s",
                f"{x.per_second:,.0f} {unit}/s",
                _ratio(x.per_second, ref),
                "",
            )
        )
    for r in report.results:
        posts = f", {r.posts_per_second:,.1f} posts/s" if r.posts > 1 else ""
        lines.append(
            _row(
                f"**worker: {r.label}** ({r.posts:,} posts)",
                f"{r.writes:,} writes",
                f"{r.seconds:.2f} s",
                f"**{r.writes_per_second:,.0f} writes/s**{posts}",
                _ratio(r.writes_per_second, ref),
                _verdict(r.writes_per_second),
            )
        )
    return lines


def _time_row(label: str, wall: float, produced: str, item: LayerRate | Result) -> str:
    redis = item.redis
    assert redis is not None
    cpu = ""
    if isinstance(item, Result):
        cpu = " / ".join(f"{item.cpu.get(g, 0.0):.0f}" for g in CPU_GROUPS)
    return _row(
        label,
        f"{wall:.2f} s",
        produced,
        f"{redis.scripts_s:.2f} s ({100 * redis.scripts_s / wall:.0f}%)",
        f"{redis.other_s:.2f} s",
        f"{redis.evalsha_calls:,}",
        cpu,
    )


def _time_table(report: Report) -> list[str]:
    cpu_head = "CPU, % of one core: " + " / ".join(CPU_GROUPS)
    lines = [
        _row(
            "window",
            "wall",
            "produce acked",
            "Redis in scripts",
            "Redis other",
            "EVALSHA",
            cpu_head,
        )
    ]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for x in report.layers:
        if x.redis is not None:
            lines.append(_time_row(f"alone: {x.label}", x.seconds, "", x))
    for r in report.results:
        lines.append(_time_row(f"worker: {r.label}", r.seconds, f"{r.produce_seconds:.2f} s", r))
    return lines


def _facts(report: Report) -> list[str]:
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    lines = [
        f"- machine: {report.machine}; {report.busy_before:.0f}% of one core was busy with "
        "other processes just before measuring",
        f"- dataset: {report.dataset}",
        f"- worker settings: {settings}",
    ]
    return lines + [f"- {n}" for n in report.notes]


def _details(report: Report) -> list[str]:
    lines = [
        f"- {r.label}: verified {r.verified}; mean time from a post's id to the end of its "
        f"fan-out, by the worker's own histogram: {r.mean_latency:.3f} s"
        for r in report.results
    ]
    return lines + [f"- {c.label}: `{c.command}`" for c in report.ceilings]


def render(report: Report) -> str:
    out = [f"## {report.title}", "", "```", report.command, "```", "", *_facts(report), ""]
    out += [*_rates_table(report), "", *_time_table(report), "", *_details(report)]
    return "\n".join(out) + "\n"


def dataset_line(followers: int, authors: int, per_author: int, posts: Sequence[int]) -> str:
    celebrity, stream = posts
    return (
        f"1 author with {followers:,} active followers (each with a timeline holding only a "
        f"sentinel), {authors:,} authors with {per_author} followers each drawn from the same "
        f"pool; {celebrity} celebrity post(s), {stream:,} stream posts"
    )
