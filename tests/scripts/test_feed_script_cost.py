"""The feed page script's stage cuts (scripts/bench/feed_script_cost.py): each cut must be
a script Redis accepts, stop where its stage ends, and the last one be the script itself.
A `--@stage` line moved into a block, or a stage renamed twice, shows up here."""

import itertools
import re

import pytest
import redis.asyncio as aioredis

from scripts.bench.common import BenchError
from scripts.bench.feed_script_cost import cuts
from server.feed import timeline_reads as store

SCRIPT = store.FEED_PAGE_SCRIPT.text


def test_one_cut_per_stage_in_order_and_the_last_is_the_script() -> None:
    stages = re.findall(r"^--@stage (.+)$", SCRIPT, re.MULTILINE)
    assert len(stages) >= 5
    assert len(set(stages)) == len(stages), "two stages share a name"
    found = cuts(SCRIPT)
    assert list(found) == ["arguments only", *stages]
    assert found[stages[-1]] == SCRIPT
    # each cut stops right before the next stage's line, and keeps everything else
    for stage, nxt in itertools.pairwise(stages):
        before, after = found[stage].split("do return 0 end\n")
        assert after.startswith(f"--@stage {nxt}\n")
        assert before + after == SCRIPT


async def test_every_cut_is_a_script_redis_runs(redis_client: aioredis.Redis) -> None:
    user = 4242
    names, args = store.page_call(user, None, 20, [], None)
    for stage, text in cuts(SCRIPT).items():
        await redis_client.script_load(text)  # a syntax error raises here
        reply = await redis_client.eval(text, len(names), *names, *args)
        if stage == "arguments only":
            assert reply == 0
    # the timeline is missing: the whole script declines, as it should
    assert (await redis_client.eval(SCRIPT, len(names), *names, *args))[0] == 0


def test_a_script_without_stages_is_refused() -> None:
    with pytest.raises(BenchError, match="no --@stage"):
        cuts("return 1")
