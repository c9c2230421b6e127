import datetime as dt

import polars as pl
import pytest

from lake.factors import factor_table, pct_chg, rank_cross_section, trade_num_mean


def lake_frame() -> pl.LazyFrame:
    t = [dt.datetime(2024, 1, 1, h, tzinfo=dt.UTC) for h in range(4)]
    rows = {
        "AAA": ([10.0, 11.0, 12.1, 13.31], [1, 2, 3, 4]),
        "BBB": ([100.0, 90.0, 81.0, 72.9], [10, 10, 10, 10]),
        "CCC": ([5.0, 5.0, 6.0, 6.0], [0, 6, 0, 6]),
    }
    frames = [
        pl.DataFrame({"symbol": s, "candle_begin_time": t, "close": c, "trade_num": n})
        for s, (c, n) in rows.items()
    ]
    # Shuffle row order: factors must not depend on storage order.
    return pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=3).lazy()


def test_factors_per_symbol_in_time_order_and_ranked_across_symbols() -> None:
    table = factor_table(lake_frame(), {"mom": pct_chg(1), "trades": trade_num_mean(2)})
    ranked = rank_cross_section(table, ["mom"]).collect().sort("symbol", "candle_begin_time")
    aaa = ranked.filter(pl.col("symbol") == "AAA")
    assert aaa["mom"].to_list()[0] is None
    assert aaa["mom"].to_list()[1:] == pytest.approx([0.1, 0.1, 0.1])
    assert ranked.filter(pl.col("symbol") == "BBB")["trades"].to_list()[1:] == [10.0, 10.0, 10.0]
    last = ranked.filter(pl.col("candle_begin_time") == pl.col("candle_begin_time").max()).sort("mom_rank")
    assert last["symbol"].to_list() == ["AAA", "CCC", "BBB"]  # +10%, 0%, -10%
    assert last["mom_pct"].to_list() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_bad_window() -> None:
    with pytest.raises(ValueError):
        pct_chg(0)
