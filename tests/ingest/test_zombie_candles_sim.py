"""Zombie candles from the simulator: a delisted USDⓈ-M perpetual that keeps producing zero-volume
candles at its last close (FTTBUSD, binance.md §6.3), in REST and in the archive alike.

The simulator had none (``SimConfig.zombie_minutes``, default 0), so lake's handling of them was
only checked on hand-made frames. Here they come the way Binance sends them: a backfill stores them
exactly; the audit counts them as zero-volume rows, finds no hole and ends the listing segment at
the last traded candle; offset 0 of ``--method binance`` equals the simulator's own 1h candles over
the delisting, zombie hours included (prices and trade counts exactly, volume sums to 1e-12), and
so does the seed method (a zombie's four prices are equal).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from lake.audit import audit
from lake.schema import VALUE_COLUMNS
from lake.sim.config import SimConfig
from lake.sim.server import SimServer
from lake.transform.build import build_offsets, scan_offsets
from tests.ingest.test_archive_gaps_and_precedence import COLS, run, settings, stored

TT = "usdt_perp"
M, H, DAY = 60_000, 3_600_000, 86_400_000
ZOMBIE_DAYS = 2


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


async def test_zombie_candles_are_stored_audited_and_resampled_like_binances(tmp_path: Path) -> None:
    cfg = SimConfig(
        start="2024-06-01T00:00:00Z",
        speed=0,
        history_days=80,
        n_symbols=3,
        n_symbols_by_market={"um": 10},
        zombie_minutes=ZOMBIE_DAYS * 1440,
    )
    async with SimServer(cfg) as sim:
        sym = sim.market.awkward.delisted["um"][0]
        end = sim.market.info("um", sym).end_ms
        assert end is not None
        start, stop = end - end % DAY - DAY, end - end % DAY + (ZOMBIE_DAYS + 2) * DAY
        want = sim.market.truth(TT, "1m", [sym], start, stop)
        t = pl.col("candle_begin_time").dt.epoch("ms")
        traded = want.filter(t < end)
        last_close = traded["close"][-1]
        zombies = want.filter(t >= end)
        # what the simulator serves: one zero-volume candle a minute, at the last close, then nothing
        assert zombies.height == ZOMBIE_DAYS * 1440
        assert zombies.select(t.max()).item() == end + ZOMBIE_DAYS * DAY - M
        assert (
            zombies.select(pl.all_horizontal(pl.col("open", "high", "low", "close") == last_close))
            .to_series()
            .all()
        )
        assert zombies.select(pl.col("volume", "quote_volume", "trade_num").sum()).row(0) == (0, 0, 0)

        s = settings(sim, tmp_path / "lake")
        await run(s, at(start), at(stop), [sym], source="auto", tt=TT, iv="1m")
        got = stored(s, [sym], TT, "1m")
        assert got.select(COLS).equals(want.select(COLS))

        (a,) = audit(s.root, TT, "1m", [sym])
        assert [h.kind for h in a.holes] == []
        assert a.zero_volume == want.filter(pl.col("volume") == 0).height >= ZOMBIE_DAYS * 1440
        last_traded = traded.filter(pl.col("volume") > 0).select(t.max()).item()
        assert a.segments == [(at(start), at(last_traded + M))]

        hourly = sim.market.truth(TT, "1h", [sym], start, stop).select(COLS)
        assert hourly.filter(t >= end).height == ZOMBIE_DAYS * 24
        exact = ["symbol", "candle_begin_time", "open", "high", "low", "close", "trade_num"]
        sums = [c for c in VALUE_COLUMNS if c not in exact]  # (summed in another order: last-bit differences)
        for method in ("binance", "seed"):
            build_offsets(s.root, TT, "1h", base="1m", offsets=["0m"], method=method, rebuild=True)
            ours = scan_offsets(s.root, TT, "1h", offsets=["0m"]).collect().sort("candle_begin_time")
            assert ours.select(exact).equals(hourly.select(exact)), method
            for c in sums:  # (zero in the zombie hours: zero exactly)
                assert ((ours[c] - hourly[c]).abs() <= 1e-12 * hourly[c].abs()).all(), (method, c)
