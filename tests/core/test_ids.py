import asyncio
import subprocess
import sys

import asyncpg
import pytest

from core.ids import (
    MAX_SEQUENCE,
    IdError,
    IdGenerator,
    IdLease,
    id_timestamp_ms,
    min_id_for_ms,
)
from core.settings import Settings
from tests.support.env import ROOT


class FakeClock:
    """A settable clock: the generator's time logic is pure, so it is tested without sleeps."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now


def test_ids_increase_and_carry_their_timestamp() -> None:
    clock = FakeClock(1_800_000_000_000)
    generator = IdGenerator(5, clock)
    first = generator.next_id()
    second = generator.next_id()
    clock.now += 1
    third = generator.next_id()
    assert first < second < third
    assert id_timestamp_ms(first) == 1_800_000_000_000
    assert id_timestamp_ms(third) == 1_800_000_000_001
    assert min_id_for_ms(1_800_000_000_001) <= third


def test_different_workers_never_collide_in_the_same_millisecond() -> None:
    clock = FakeClock(1_800_000_000_000)
    a, b = IdGenerator(1, clock), IdGenerator(2, clock)
    ids = {a.next_id() for _ in range(1000)} | {b.next_id() for _ in range(1000)}
    assert len(ids) == 2000


def test_sequence_overflow_moves_to_the_next_millisecond() -> None:
    clock = FakeClock(1_800_000_000_000)
    generator = IdGenerator(1, clock)
    ids = [generator.next_id() for _ in range(MAX_SEQUENCE + 1)]
    assert len(set(ids)) == MAX_SEQUENCE + 1
    # The 4097th id of a millisecond must wait for the clock to move on.
    reads_before = clock.reads

    def advancing() -> int:
        clock.now += 1 if clock.reads > reads_before + 3 else 0
        return clock()

    generator._clock = advancing
    overflow = generator.next_id()
    assert overflow > ids[-1]
    assert id_timestamp_ms(overflow) == id_timestamp_ms(ids[-1]) + 1


def test_small_clock_step_back_is_waited_out_large_one_refused() -> None:
    clock = FakeClock(1_800_000_000_000)
    generator = IdGenerator(1, clock)
    before = generator.next_id()
    clock.now -= 60_000
    with pytest.raises(IdError, match="clock moved back"):
        generator.next_id()
    clock.now += 60_000
    assert generator.next_id() > before


def test_worker_id_bounds() -> None:
    with pytest.raises(ValueError, match="worker id"):
        IdGenerator(1024)


async def test_lease_gives_distinct_worker_ids_and_release_frees_them(
    db: asyncpg.Pool,
) -> None:
    leases = [IdLease(db, holder=f"t{i}", ttl_seconds=30) for i in range(5)]
    generators = [await lease.acquire() for lease in leases]
    assert len({g.worker_id for g in generators}) == 5
    for lease in leases:
        await lease.release()
    with pytest.raises(IdError, match="lease lost"):
        generators[0].next_id()


async def test_a_lost_lease_stops_id_generation(db: asyncpg.Pool) -> None:
    lease = IdLease(db, holder="victim", ttl_seconds=0.4)
    generator = await lease.acquire()
    generator.next_id()
    renewal = asyncio.create_task(lease.keep())  # as a service's supervisor runs it
    # Someone else took the worker id (as after an expiry): renewal must notice, and end
    # (the supervisor then stops the process: core.ids.IdLease.child).
    await db.execute(
        "UPDATE id_worker_leases SET generation = generation + 1 WHERE worker_id = $1",
        generator.worker_id,
    )
    with pytest.raises(IdError, match="lease lost"):
        await asyncio.wait_for(renewal, 10)
    assert not generator.valid
    with pytest.raises(IdError):
        generator.next_id()
    await lease.release()


def test_ids_from_concurrent_processes_are_unique_and_time_ordered(settings: Settings) -> None:
    per_process, processes = 20_000, 4
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.idgen_worker",
                settings.database_url,
                str(per_process),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outputs = [child.communicate(timeout=60)[0].splitlines() for child in children]
    assert all(child.returncode == 0 for child in children)

    every_id: list[int] = []
    workers = set()
    for lines in outputs:
        _, worker, _, start_ms = lines[0].split()
        end_ms = int(lines[-1].split()[1])
        ids = [int(line) for line in lines[1:-1]]
        workers.add(worker)
        assert len(ids) == per_process
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "not strictly increasing"
        # Every id carries a timestamp inside the window in which it was generated.
        assert int(start_ms) <= id_timestamp_ms(ids[0])
        assert id_timestamp_ms(ids[-1]) <= end_ms
        every_id.extend(ids)
    assert len(workers) == processes
    assert len(set(every_id)) == per_process * processes
    # Ordering by id is ordering by time (to the millisecond) across processes.
    by_id = sorted(every_id)
    stamps = [id_timestamp_ms(i) for i in by_id]
    assert stamps == sorted(stamps)
