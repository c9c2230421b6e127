"""Sharding, subscription changes and the reconnect backoff (pure parts of lake.live.ws)."""

from __future__ import annotations

import random

import pytest

from lake.live.ws import ShardPlan, backoff_delay, stream_name


def test_stream_name() -> None:
    assert stream_name("BTCUSDT", "5m") == "btcusdt@kline_5m"
    assert stream_name("BTCUSD_PERP", "1m") == "btcusd_perp@kline_1m"


@pytest.mark.parametrize(
    ("n", "cap", "shards"), [(0, 1024, 0), (1, 1024, 1), (1024, 1024, 1), (1025, 1024, 2), (450, 200, 3)]
)
def test_initial_plan_balanced_under_cap(n: int, cap: int, shards: int) -> None:
    streams = [f"s{i}@kline_1m" for i in range(n)]
    plan = ShardPlan.initial(streams, cap)
    assert len(plan.shards) == shards
    assert all(len(s) <= cap for s in plan.shards)
    assert plan.streams == set(streams)
    if shards:
        sizes = [len(s) for s in plan.shards]
        assert max(sizes) - min(sizes) <= 1 or sizes[-1] < sizes[0]


def test_add_fills_then_opens_new_shard_remove_frees_room() -> None:
    plan = ShardPlan.initial(["a", "b", "c"], 3)
    assert plan.add(["b", "d"]) == {1: ["d"]}
    assert plan.remove(["a", "zz"]) == {0: ["a"]}
    assert plan.add(["e", "f"]) == {0: ["e"], 1: ["f"]}
    assert all(len(s) <= 3 for s in plan.shards)
    assert plan.streams == {"b", "c", "d", "e", "f"}


def test_backoff_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(a, 0.2, 30.0, rng) for a in range(1, 40)]
    assert all(0 < d <= 30.0 for d in delays)
    assert delays[0] <= 0.2
    assert max(delays) > 15.0
    assert len({round(d, 6) for d in delays[-10:]}) == 10  # jitter: not one fixed value
    with pytest.raises(ValueError):
        ShardPlan(0)
