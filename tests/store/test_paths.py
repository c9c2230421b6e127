import datetime as dt
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lake.binance.intervals import INTERVALS
from lake.binance.markets import TRADE_TYPES
from lake.binance.symbols import SYMBOL_RE
from lake.errors import ValidationError
from lake.store.klines import write_klines
from lake.store.paths import PartitionKey, partition_end
from tests.store.helpers import frame, opens, t0_ms

symbols = st.from_regex(SYMBOL_RE, fullmatch=True)
combos = st.sampled_from(
    [(tt, iv) for tt, t in TRADE_TYPES.items() for iv, i in INTERVALS.items() if t.is_spot or not i.spot_only]
)


@given(combos, symbols, st.integers(0, 4_102_444_800_000))
def test_partition_path_round_trip(combo: tuple[str, str], symbol: str, ts: int) -> None:
    tt, iv = combo
    key = PartitionKey.for_candle("klines", tt, iv, symbol, ts)
    assert PartitionKey.parse(key.path) == key
    assert PartitionKey.parse("some/root/" + key.dir) == key
    assert key.start_ms <= ts < key.end_ms
    assert key.path == f"klines/trade_type={tt}/interval={iv}/symbol={symbol}/date={key.date}/data.parquet"


@given(st.text(max_size=50).filter(lambda s: not SYMBOL_RE.fullmatch(s)))
def test_any_non_symbol_text_is_rejected(text: str) -> None:
    with pytest.raises(ValidationError):
        PartitionKey("klines", "usdt_perp", "5m", text, dt.date(2024, 1, 1))


def test_partition_sizes_depend_on_interval() -> None:
    iv = INTERVALS
    assert partition_end(iv["1m"], dt.date(2024, 1, 31)) == dt.date(2024, 2, 1)
    assert partition_end(iv["1s"], dt.date(2024, 2, 28)) == dt.date(2024, 2, 29)
    assert partition_end(iv["5m"], dt.date(2024, 12, 1)) == dt.date(2025, 1, 1)
    assert partition_end(iv["30m"], dt.date(2024, 2, 1)) == dt.date(2024, 3, 1)
    assert partition_end(iv["1h"], dt.date(2024, 1, 1)) == dt.date(2025, 1, 1)
    assert partition_end(iv["1M"], dt.date(2024, 1, 1)) == dt.date(2025, 1, 1)
    with pytest.raises(ValidationError, match="not a month start"):
        PartitionKey.parse("klines/trade_type=usdt_perp/interval=5m/symbol=BTCUSDT/date=2024-01-05")
    with pytest.raises(ValidationError, match="not a year start"):
        PartitionKey.parse("klines/trade_type=usdt_perp/interval=1h/symbol=BTCUSDT/date=2024-02-01")
    with pytest.raises(ValidationError):
        PartitionKey.parse("klines/trade_type=usdt_perp/interval=5m/symbol=../date=2024-01-05")


@pytest.mark.parametrize("bad", ["../x", "A/B", "", "..", "ΒTC", "/etc/passwd", "X/../../Y"])
def test_hostile_symbol_never_writes(tmp_path, bad: str) -> None:
    root = tmp_path / "lake"
    root.mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValidationError):
        write_klines(root, "usdt_perp", "5m", bad, frame(opens(t0_ms(), 3)))
    assert sorted(os.listdir(tmp_path)) == before
    assert list(root.rglob("*")) == []
