"""Media benchmark (issue 25): what an image costs the media worker, by size, and what
`POST /v1/media` (a pre-signed upload URL) costs the API server.

    .venv/bin/python -m scripts.bench.media_cost --sizes 0.5,2,8,16 --rate 50

- processing: server.media_processing.process (decode, strip metadata, re-encode, preview,
  blurhash) called in this process on generated photo-like JPEGs with EXIF, timed by
  this process's CPU time: images per second per worker core. Its same-run ceiling is
  Pillow decoding the same bytes and nothing else (an image cannot cost less).
- store round trip: what the worker does around it (GET the upload from the object store,
  process, PUT image and preview) against the local store, under keys of its own that it
  deletes; wall time per image.
- API: the API server on the bench database, the Go load generator sending
  `GET /healthz` (the same-run ceiling: a request that does no work), then
  `POST /v1/media` at the same fixed rate; server CPU per request from /proc, less what
  the idle server uses. Nothing is uploaded, so the server's media worker polls each new
  row's upload key (HEAD, backing off) until its URL expires: the bench server runs with
  a short MEDIA_UPLOAD_TTL_SECONDS, so each row costs a few polls (about what a real
  upload arriving within seconds costs), and an upload's full cost, polls included, is
  measured until every row has failed. Also botocore's pre-signing alone, in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import redis
from PIL import Image

from core.object_store import ObjectStore, ObjectStoreError
from scripts.bench import common, cpu
from scripts.bench.bench_data import dataset_info, mint_tokens
from scripts.bench.cpu import machine
from scripts.bench.loadgen import Plan, run_load
from scripts.bench.progress import note
from scripts.bench.report import Row, revision, summarize
from scripts.bench.server_proc import ROOT, ServerConfig, running_server
from server import media_processing as mp
from server.media_processing import process

SEED = 25
UPLOAD_SIZE = 2_000_000  # bytes declared by each POST /v1/media (below MEDIA_MAX_BYTES)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="0.5,2,8,16", help="megapixels, a comma list")
    p.add_argument("--seconds", type=float, default=3.0, help="CPU seconds spent per size and step")
    p.add_argument("--round-trips", type=int, default=3, help="store round trips per size")
    p.add_argument("--rate", type=float, default=50.0, help="offered POST /v1/media per s")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds per run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--users", type=int, default=5000, help="uploaders drawn from")
    p.add_argument("--presigns", type=int, default=2000, help="pre-signed URLs timed alone")
    p.add_argument("--no-api", action="store_true", help="skip the API server runs")
    p.add_argument(
        "--upload-ttl",
        type=int,
        default=5,
        help="the bench server's MEDIA_UPLOAD_TTL_SECONDS: how long its worker polls a "
        "row nothing is uploaded for (production: 900)",
    )
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle server CPU measured")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="bound on the drain")
    p.add_argument(
        "--server-root",
        type=Path,
        default=ROOT,
        help="run the API server from another checkout (e.g. a clean export of a commit)",
    )
    p.add_argument("--port", type=int, default=common.BENCH_PORT)
    p.add_argument("--db", default=common.BENCH_DB)
    p.add_argument("--redis-db", type=int, default=common.BENCH_REDIS_DB)
    # run_load's quiet-machine gate, as in feed_read.
    p.add_argument("--quiet-below", type=float, default=25.0)
    p.add_argument("--quiet-wait", type=float, default=300.0)
    return p.parse_args(argv)


# -- processing -----------------------------------------------------------------------


def photo_like(megapixels: float, seed: int = SEED) -> bytes:
    """A 4:3 JPEG (quality 90) that compresses like a photo: smooth colour fields with
    grain, so neither a flat image (too cheap) nor pure noise (too dear); with an EXIF
    block (camera, GPS) that processing must drop."""
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = int(megapixels * 1e6 // width)
    rng = random.Random(seed)  # noqa: S311 - test pixels, not secrets
    fields = Image.new("RGB", (16, 12))
    fields.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(16 * 12)])
    image = fields.resize((width, height), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((width, height), 24).convert("RGB")
    image = Image.blend(image, grain, 0.15)
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"  # Make
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}  # GPS
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, exif=exif)
    return out.getvalue()


def cpu_per_call(work: Callable[[], object], seconds: float) -> tuple[float, int]:
    """This process's CPU seconds per call of `work`, over at least `seconds` and 3 calls."""
    calls, started = 0, time.process_time()
    while calls < 3 or time.process_time() - started < seconds:
        work()
        calls += 1
    return (time.process_time() - started) / calls, calls


def decode_only(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


@dataclass(frozen=True, slots=True)
class Processed:
    megapixels: float
    width: int
    height: int
    upload_bytes: int
    decode_s: float  # CPU per image, decoding only (the ceiling)
    process_s: float  # CPU per image, the whole of process()
    calls: int
    image_bytes: int
    preview_bytes: int
    steps: tuple[tuple[str, float], ...] = ()  # (step, CPU s per image)
    round_trip_s: float | None = None  # wall, store GET + process + 2 PUTs


def step_costs(data: bytes, seconds: float, max_pixels: int) -> tuple[tuple[str, float], ...]:
    """Where process() spends its CPU, step by step (its private steps, called as it
    calls them; the steps add up to about the whole)."""
    pixels = mp._decode(mp._open(data, "JPEG", max_pixels))
    width, height = pixels.size
    preview = (mp.PREVIEW_WIDTH, round(height * mp.PREVIEW_WIDTH / width))
    small = pixels.resize((mp.BLURHASH_SOURCE_WIDTH, 48)).convert("RGB")
    steps: dict[str, Callable[[], object]] = {
        "decode, upright, copy": lambda: mp._decode(mp._open(data, "JPEG", max_pixels)),
        "encode image": lambda: mp._encode(pixels, alpha=False),
        "preview resize": lambda: pixels.resize(preview, Image.Resampling.LANCZOS),
        "blurhash source resize": lambda: pixels.resize((mp.BLURHASH_SOURCE_WIDTH, 48)),
        "blurhash": lambda: mp._blurhash(small),
    }
    return tuple((name, cpu_per_call(work, seconds / 5)[0]) for name, work in steps.items())


def measure_processing(megapixels: float, seconds: float, max_pixels: int) -> Processed:
    data = photo_like(megapixels)
    decode_s, _ = cpu_per_call(lambda: decode_only(data), seconds)
    process_s, calls = cpu_per_call(lambda: process(data, "image/jpeg", max_pixels), seconds)
    out = process(data, "image/jpeg", max_pixels)
    row = Processed(
        megapixels,
        out.width,
        out.height,
        len(data),
        decode_s,
        process_s,
        calls,
        len(out.image.data),
        len(out.preview.data),
        step_costs(data, seconds, max_pixels),
    )
    note(
        f"media: {megapixels:g} MP ({out.width}x{out.height}, {len(data):,} B): "
        f"{1 / process_s:.2f} images/s per core; decoding alone {1 / decode_s:.2f}/s"
    )
    return row


async def round_trips(rows: list[Processed], trips: int, max_pixels: int) -> list[Processed]:
    """The worker's store traffic around process(), against the local object store,
    under a prefix of its own (deleted after): wall seconds per image."""
    settings = common.base_settings()
    timed: list[Processed] = []
    async with ObjectStore.open(settings) as store:
        for row in rows:
            data = photo_like(row.megapixels)
            prefix = f"bench-media/{uuid.uuid4().hex}"
            keys = [f"{prefix}/upload", f"{prefix}/image", f"{prefix}/preview"]
            await store.put(keys[0], data, "image/jpeg")  # what the client uploaded
            started = time.perf_counter()
            for _ in range(trips):
                upload = await store.get(keys[0], len(data))
                out = await asyncio.to_thread(process, upload, "image/jpeg", max_pixels)
                await store.put(keys[1], out.image.data, out.image.content_type)
                await store.put(keys[2], out.preview.data, out.preview.content_type)
            wall = (time.perf_counter() - started) / trips
            for key in keys:
                await store.delete(key)
            timed.append(replace(row, round_trip_s=wall))
    return timed


# -- API ------------------------------------------------------------------------------


async def presign_cost(count: int) -> tuple[float, float]:
    """CPU seconds, in this process, per pre-signed PUT URL (botocore's SigV4), and per
    HEAD of a key nothing was uploaded to (the worker's poll of a waiting row)."""
    async with ObjectStore.open(common.base_settings()) as store:
        await store.presign_put("bench/warm", "image/jpeg", UPLOAD_SIZE, 900)
        started = time.process_time()
        for n in range(count):
            await store.presign_put(f"bench/{n}", "image/jpeg", UPLOAD_SIZE, 900)
        presign = (time.process_time() - started) / count
        heads = max(1, count // 10)  # a round trip each: fewer
        await store.head("bench-media/missing")
        started = time.process_time()
        for _ in range(heads):
            await store.head("bench-media/missing")
        return presign, (time.process_time() - started) / heads


@dataclass(frozen=True, slots=True)
class Api:
    idle: float  # % of a core, the server with no request
    healthz: Row
    post: Row
    uploads: int  # rows the POST run created (warm-up included)
    full_s: float  # server CPU per upload, from the POST run's start until all failed


async def pending(db_url: str, clear: bool = False, since: float | None = None) -> int:
    """Media rows still `processing` in the bench database (`clear` deletes them: left by
    an earlier run, they would be polled during this one), or with `since` (Unix time)
    the rows created since then, whatever their state."""
    conn = await asyncpg.connect(db_url)
    try:
        if clear:
            await conn.execute("DELETE FROM media WHERE status = 'processing'")
        if since is not None:
            query = "SELECT count(*) FROM media WHERE created_at >= to_timestamp($1)"
            return int(await conn.fetchval(query, since))
        return int(await conn.fetchval("SELECT count(*) FROM media WHERE status = 'processing'"))
    finally:
        await conn.close()


def server_seconds(pids: tuple[int, ...]) -> float:
    return sum(cpu.process_seconds(pid) for pid in pids)


def api_runs(args: argparse.Namespace) -> Api:
    """The idle server, /healthz, then POST /v1/media at the same rate, then until the
    worker has failed every row the POSTs made (nothing is uploaded)."""
    base = common.base_settings()
    db_url = common.database_url(base.database_url, args.db)
    redis_url = common.redis_url(base.redis_url, args.redis_db)
    args.redis_port = urlsplit(redis_url).port or 6379  # run_load's CPU accounting
    _, user_ids = asyncio.run(dataset_info(db_url, common.THROTTLE_MAX))
    tokens = mint_tokens(user_ids, args.users)
    ttl = (("MEDIA_UPLOAD_TTL_SECONDS", str(args.upload_ttl)),)
    config = ServerConfig(
        db_url, redis_url, args.port, common.THROTTLE_MAX, root=args.server_root, extra_env=ttl
    )
    body = orjson.dumps({"content_type": "image/jpeg", "size": UPLOAD_SIZE}).decode()
    asyncio.run(pending(db_url, clear=True))
    rows = []
    with running_server(config) as server:
        note(f"media: server pids {server.pids} at {server.base_url}")
        before = server_seconds(server.pids)
        time.sleep(args.idle_seconds)
        idle = 100.0 * (server_seconds(server.pids) - before) / args.idle_seconds
        plan = Plan(
            base_url=server.base_url,
            path="/v1/media",
            tokens=tokens,
            rate=args.rate,
            warmup=args.warmup,
            duration=args.duration,
            connections=args.connections,
            method="POST",
            body=body,
        )
        started, at, wall = 0.0, 0.0, 0.0
        for label, run in (
            ("GET /healthz (ceiling)", replace(plan, path="/healthz", method="GET", body="")),
            ("POST /v1/media", plan),
        ):
            note(f"media: {label} at {args.rate:,.0f}/s")
            started, at, wall = server_seconds(server.pids), time.monotonic(), time.time()
            result, spent = run_load(args, run, server.pids)
            # 201 is this route's success: counted as the report's "200" (not an error).
            result.outcomes["200"] += result.outcomes.pop("201", 0)
            rows.append(summarize(label, result, spent))
        uploads = asyncio.run(pending(db_url, since=wall))
        note(f"media: {uploads:,} rows made; waiting for the worker to fail them all")
        deadline = time.monotonic() + args.drain_timeout
        while asyncio.run(pending(db_url)):
            if time.monotonic() > deadline:
                raise common.BenchError(
                    f"media rows still processing after {args.drain_timeout:g} s"
                )
            time.sleep(1.0)
        spent_all = server_seconds(server.pids) - started - idle / 100 * (time.monotonic() - at)
    return Api(idle, rows[0], rows[1], uploads, spent_all / uploads if uploads else math.nan)


# -- report ---------------------------------------------------------------------------


def cpu_ms(row: Row, idle: float) -> float:
    """Server CPU per answered request over the window, less the idle server's."""
    return 10.0 * (row.cpu["server"] - idle) / row.achieved if row.achieved else math.nan


def markdown(
    args: argparse.Namespace,
    processed: list[Processed],
    api: Api | None,
    presign_s: tuple[float, float] | None,
) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### Media, {today}",
        "",
        f"- machine: {machine()}; processing code at `{revision(ROOT)}`, API server at "
        f"`{revision(args.server_root)}` (`{args.server_root}`)",
        "- processing: `server.media_processing.process` in one process on generated 4:3 "
        "JPEGs (quality 90, colour fields with grain, EXIF with GPS), CPU time of the "
        f"process, at least {args.seconds:g} CPU s per size; ceiling: Pillow decoding the "
        "same bytes only",
        "",
        "| size | pixels | upload | process CPU per image | images/s per core | decode only "
        "(ceiling) | ratio | output image + preview | store round trip (wall) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in processed:
        trip = "-" if r.round_trip_s is None else f"{r.round_trip_s * 1000:,.0f} ms"
        lines.append(
            f"| {r.megapixels:g} MP | {r.width}x{r.height} | {r.upload_bytes / 1e6:.2f} MB "
            f"| {r.process_s * 1000:,.0f} ms | **{1 / r.process_s:.2f}** "
            f"| {1 / r.decode_s:.2f}/s ({r.decode_s * 1000:,.0f} ms) "
            f"| {r.process_s / r.decode_s:.1f}x "
            f"| {r.image_bytes / 1e6:.2f} MB + {r.preview_bytes / 1e3:.0f} kB | {trip} |"
        )
    names = [name for name, _ in processed[0].steps] if processed else []
    if names:
        lines += [
            "",
            "Where the CPU goes (each step alone, ms per image):",
            "",
            "| size | " + " | ".join(names) + " |",
            "|--:|" + "--:|" * len(names),
        ]
        for r in processed:
            cells = " | ".join(f"{s * 1000:,.0f}" for _, s in r.steps)
            lines.append(f"| {r.megapixels:g} MP | {cells} |")
    lines += [
        "",
        f"Store round trip: GET the upload from the local object store, process (in a "
        f"thread), PUT image and preview; mean wall time of {args.round_trips} per size.",
        "",
    ]
    if api is not None:
        healthz, post = cpu_ms(api.healthz, api.idle), cpu_ms(api.post, api.idle)
        lines += [
            f"API: one `python -m server` on the bench database, MEDIA_UPLOAD_TTL_SECONDS="
            f"{args.upload_ttl}; Go load generator, open loop, {args.rate:,.0f} req/s, "
            f"{args.warmup:g} s warm-up, {args.duration:g} s measured, {args.connections} "
            f"connections, {args.users:,} uploaders; body `{{content_type: image/jpeg, size: "
            f"{UPLOAD_SIZE}}}`. The idle server used {api.idle:.1f}% of a core, taken off.",
            "",
            "| request | achieved req/s | p50 ms | p99 ms | errors | server CPU % | server "
            "CPU per request |",
            "|---|--:|--:|--:|--|--:|--:|",
        ]
        for row, ms in ((api.healthz, healthz), (api.post, post)):
            lines.append(
                f"| {row.label} | {row.achieved:,.0f} | {row.p50:.1f} | {row.p99:.1f} "
                f"| {row.errors} | {row.cpu['server']:.0f} | {ms:.2f} ms |"
            )
        lines += [
            "",
            f"- POST /v1/media: {post / healthz:.1f}x the server CPU of /healthz in the same "
            "run (its window includes the worker polling the rows made so far)",
            f"- each upload's whole cost to the server, the worker's polls until its row "
            f"failed included: {api.full_s * 1000:.2f} ms CPU ({api.uploads:,} rows)",
        ]
    if presign_s is not None:
        lines.append(
            f"- one pre-signed PUT URL alone (botocore SigV4 in this process, "
            f"{args.presigns:,} timed): {presign_s[0] * 1e6:,.0f} µs CPU; one HEAD of a key "
            f"not uploaded yet (a worker poll): {presign_s[1] * 1e6:,.0f} µs CPU"
        )
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    max_pixels = common.base_settings().media_max_pixels
    try:
        processed = [
            measure_processing(float(mp), args.seconds, max_pixels)
            for mp in args.sizes.split(",")
            if mp  # --sizes "": the API part only
        ]
        if args.round_trips:
            processed = asyncio.run(round_trips(processed, args.round_trips, max_pixels))
        presign_s = asyncio.run(presign_cost(args.presigns)) if args.presigns else None
        api = None if args.no_api else api_runs(args)
    except (
        common.BenchError,
        OSError,
        ObjectStoreError,
        asyncpg.PostgresError,
        redis.RedisError,
    ) as exc:
        sys.exit(f"media_cost: error: {exc}")
    print(markdown(args, processed, api, presign_s))


if __name__ == "__main__":
    main()
