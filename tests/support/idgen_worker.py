"""Child process for the id uniqueness test: lease a worker id, print ids (one per line)."""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg

from core.ids import IdLease


async def main(database_url: str, count: int) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    lease = IdLease(pool, holder=f"test-{sys.argv[0]}", ttl_seconds=30)
    generator = await lease.acquire()
    lines = [f"worker {generator.worker_id} start {time.time_ns() // 1_000_000}"]
    lines.extend(str(generator.next_id()) for _ in range(count))
    lines.append(f"end {time.time_ns() // 1_000_000}")
    await lease.release()
    await pool.close()
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
