"""Factors over the whole lake as Polars expressions (the seed's BmacKit idea, without pandas loops).

Every factor is a ``pl.Expr`` evaluated per symbol in time order, so one lazy query computes it for
all symbols at once; ``rank_cross_section`` then ranks symbols against each other at each time.

    lf = scan_klines(root, "usdt_perp", "1h")
    table = factor_table(lf, {"pct_chg_24": pct_chg(24), "trades_24": trade_num_mean(24)})
    latest = rank_cross_section(table, ["pct_chg_24", "trades_24"]).filter(
        pl.col("candle_begin_time") == pl.col("candle_begin_time").max()
    )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

__all__ = ["factor_table", "pct_chg", "rank_cross_section", "trade_num_mean"]

_ORDER = "candle_begin_time"


def pct_chg(n: int, column: str = "close") -> pl.Expr:
    """Momentum ``PctChg(n)``: ``close / close.shift(n) - 1`` per symbol (null for the first ``n`` rows).

    Shifts are by rows, as in the seed (pandas ``pct_change(n)``); a series with holes compares
    candles ``n`` rows apart, not ``n`` intervals apart — check ``lake audit`` first.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    return (pl.col(column) / pl.col(column).shift(n) - 1.0).over("symbol", order_by=_ORDER)


def trade_num_mean(n: int) -> pl.Expr:
    """Mean number of trades per candle over the last ``n`` candles, per symbol (activity factor)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return pl.col("trade_num").cast(pl.Float64).rolling_mean(n).over("symbol", order_by=_ORDER)


def factor_table(lf: pl.LazyFrame, factors: Mapping[str, pl.Expr]) -> pl.LazyFrame:
    """``symbol``, ``candle_begin_time``, ``close`` and one column per factor, for every stored row."""
    return lf.select("symbol", _ORDER, "close", *(expr.alias(name) for name, expr in factors.items()))


def rank_cross_section(lf: pl.LazyFrame, columns: Sequence[str], *, descending: bool = True) -> pl.LazyFrame:
    """Add ``<col>_rank`` (1 = highest by default) and ``<col>_pct`` (rank / symbols ranked) per time.

    Ranks are distinct: equal values rank in symbol order, whatever order the rows are stored in
    (the rows come back sorted by symbol and time). A null or NaN value (``pct_chg`` of a zero
    close) is not ranked and not counted.
    """
    ranks = []
    for c in columns:
        value = pl.col(c).fill_nan(None)
        r = value.rank("ordinal", descending=descending).over(_ORDER)
        ranks.append(r.alias(f"{c}_rank"))
        ranks.append((r / value.count().over(_ORDER)).alias(f"{c}_pct"))
    # "ordinal" ranks ties in row order: sorted, that is symbol order
    return lf.sort("symbol", _ORDER).with_columns(ranks)
