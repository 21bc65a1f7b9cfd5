"""Impressions of ranked first pages, kept in Postgres (`ranking_impressions`) so the
next model is fitted on what real readers were shown and did (`python -m ranking.train
--from-database`), not only on the simulation the shipped model comes from.

A ranked first page adds its shown posts with the feature vectors the model scored
(`ImpressionLog.add`: no I/O on the request path); a supervised task of the API server
writes them in batches every FLUSH_SECONDS with COPY, and deletes rows older than
RANKING_IMPRESSIONS_DAYS. The buffer is bounded: past MAX_BUFFERED rows (Postgres away)
new impressions are dropped and counted; a crash loses at most one batch. That is the
right trade for training data, which is a sample anyway, never for user data.

Labels are computed when training, not stored: an impression is positive when the reader
liked, replied to or reposted the post within ENGAGEMENT_WINDOW of seeing it. Only
impressions older than the window are read, so every label is final.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass

import asyncpg

from ranking.simulate import Session

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
SWEEP_SECONDS = 3600.0
MAX_BUFFERED = 50_000
ENGAGEMENT_WINDOW = dt.timedelta(days=1)
COLUMNS = ("reader_id", "post_id", "page", "position", "shown_at", "model_version", "features")

# Sessions are ranked pages; rows in each come back newest post first (the chronological
# order, the baseline training compares against).
LABELLED = """
SELECT i.page, i.shown_at, i.reader_id, i.features,
       EXISTS (SELECT 1 FROM likes l
                WHERE l.post_id = i.post_id AND l.user_id = i.reader_id
                  AND l.created_at >= i.shown_at AND l.created_at < i.shown_at + $3::interval)
    OR EXISTS (SELECT 1 FROM posts p
                WHERE p.author_id = i.reader_id
                  AND (p.reply_to = i.post_id OR p.repost_of = i.post_id)
                  AND p.created_at >= i.shown_at AND p.created_at < i.shown_at + $3::interval)
       AS engaged
  FROM ranking_impressions i
 WHERE i.shown_at >= $1 AND i.shown_at < $2
 ORDER BY i.shown_at, i.page, i.post_id DESC
"""


@dataclass(frozen=True, slots=True)
class Impression:
    reader: int
    post: int
    page: int
    position: int
    model_version: str
    features: list[float]


class ImpressionLog:
    def __init__(self, db: asyncpg.Pool, keep_days: int) -> None:
        self._db = db
        self._keep = dt.timedelta(days=keep_days)
        self._buffer: list[tuple[object, ...]] = []
        self.dropped = 0  # impressions not kept because the buffer was full

    def add(self, impressions: list[Impression]) -> None:
        if len(self._buffer) + len(impressions) > MAX_BUFFERED:
            self.dropped += len(impressions)
            return
        now = dt.datetime.now(dt.UTC)
        self._buffer.extend(
            (i.reader, i.post, i.page, i.position, now, i.model_version, i.features)
            for i in impressions
        )

    async def flush(self) -> int:
        """Write what is buffered; on failure it stays buffered for the next try."""
        rows, self._buffer = self._buffer, []
        if not rows:
            return 0
        try:
            await self._db.copy_records_to_table(
                "ranking_impressions", records=rows, columns=COLUMNS
            )
        except BaseException:
            self._buffer[:0] = rows[: MAX_BUFFERED - len(self._buffer)]
            raise
        return len(rows)

    async def sweep(self) -> None:
        await self._db.execute(
            "DELETE FROM ranking_impressions WHERE shown_at < now() - $1::interval", self._keep
        )

    async def run(self) -> None:
        """The supervised task: flush every FLUSH_SECONDS, sweep every SWEEP_SECONDS.
        Postgres errors are waited out here (rows stay buffered); the rest ends the task
        for its supervisor."""
        swept = 0.0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
                if time.monotonic() - swept > SWEEP_SECONDS:
                    await self.sweep()
                    swept = time.monotonic()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("ranking impressions not written yet: %r", exc)


async def load_sessions(
    db: asyncpg.Pool | asyncpg.Connection, since: dt.datetime, until: dt.datetime
) -> list[Session]:
    """The labelled ranked pages shown in [since, until), oldest first. `until` is capped
    at now - ENGAGEMENT_WINDOW: a younger impression's label is not final yet."""
    until = min(until, dt.datetime.now(dt.UTC) - ENGAGEMENT_WINDOW)
    rows = await db.fetch(LABELLED, since, until, ENGAGEMENT_WINDOW)
    sessions: list[Session] = []
    page: int | None = None
    for row in rows:
        if row["page"] != page:
            page = row["page"]
            hour = row["shown_at"].timestamp() / 3600
            sessions.append(Session(hour, row["reader_id"], [], [], 0))
        session = sessions[-1]
        session.rows.append([float(x) for x in row["features"]])
        session.labels.append(int(row["engaged"]))
    return [Session(s.hour, s.reader, s.rows, s.labels, len(s.rows)) for s in sessions if s.rows]
