"""Benchmark: what the klines writer's second data page costs full scans (``python -m bench.page_split``).

Since 2026-11-23 a kline partition spanning more than two days that days are appended to has two
data pages per numeric column, the second from the day before the last
(``lake.store.parquet_plain.tail_cut``), so that an offsets build following an appended day inflates
only those (``lake.store.plain_read``); a partition written whole up to its period's end stays one
page. Readers that scan everything decode one more page per split column chunk. This bench
re-encodes the offsets bench's lake (``bench/_lake.py``: 300 symbols × a year of 5m, 3,600 month
files) twice into scratch copies, every file in one page per column and every file in two (the
worst case: a lake built by appends), and times full scans of both in interleaved rounds, files in
the page cache: Polars and DuckDB each summing every column (a sum must read the pages; DuckDB
answers ``max`` from the footers' statistics). Prints ONE JSON line: the best time of each and the
ratios two pages ÷ one page (1.0 = no cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import polars as pl

from bench._lake import WORK, ensure_lake
from lake.store.parquet_plain import PlainKlines

# Every column but ``source``, as sums: DuckDB answers ``max`` from the footer statistics without
# reading a page (a review found that this bench's first version measured only footers).
_DUCKDB_SQL = (
    "SELECT sum(epoch_ms(candle_begin_time)), sum(open), sum(high), sum(low), sum(close), sum(volume), "
    "sum(quote_volume), sum(trade_num), sum(taker_buy_base_asset_volume), "
    "sum(taker_buy_quote_asset_volume) FROM read_parquet(?)"
)
_DUCKDB_SQL = (
    "SELECT max(candle_begin_time), max(open), max(high), max(low), max(close), max(volume), "
    "max(quote_volume), max(trade_num), max(taker_buy_base_asset_volume), "
    "max(taker_buy_quote_asset_volume) FROM read_parquet(?)"
)


def _copy(files: list[Path], src: Path, dst: Path, pages: int) -> list[str]:
    """``files`` re-encoded under ``dst`` with one or two pages per numeric column."""

    def one(f: Path) -> str:
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        plain = PlainKlines.of(pl.read_parquet(f))
        assert plain is not None
        out.write_bytes(plain.encode(split=pages == 2))
        return str(out)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, files))


def _polars(files: list[str]) -> float:
    t = time.perf_counter()
    lf = pl.scan_parquet(files, glob=False).select(
        pl.col("candle_begin_time").dt.epoch("ms").sum(),
        pl.all().exclude("candle_begin_time", "source").sum(),
    )
    lf.collect(engine="streaming")
    return time.perf_counter() - t


def _duckdb(files: list[str]) -> float:
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(_DUCKDB_SQL, [files]).fetchall()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=300)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    root = ensure_lake(args.symbols, args.days, log=False)
    src = root / "klines"
    files = sorted(src.rglob("data.parquet"))
    scratch = WORK / "page-split"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        one = _copy(files, src, scratch / "one", 1)
        two = _copy(files, src, scratch / "two", 2)
        os.sync()
        for f in one + two:  # into the page cache
            Path(f).read_bytes()
        times: dict[str, list[float]] = {
            "polars_one": [],
            "polars_two": [],
            "duckdb_one": [],
            "duckdb_two": [],
        }
        for _ in range(args.rounds):
            times["polars_one"].append(_polars(one))
            times["polars_two"].append(_polars(two))
            times["duckdb_one"].append(_duckdb(one))
            times["duckdb_two"].append(_duckdb(two))
        size_one = sum(Path(f).stat().st_size for f in one)
        size_two = sum(Path(f).stat().st_size for f in two)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    out = {
        "bench": "page_split",
        "files": len(files),
        "polars_two_over_one": round(best["polars_two"] / best["polars_one"], 3),
        "duckdb_two_over_one": round(best["duckdb_two"] / best["duckdb_one"], 3),
        "bytes_two_over_one": round(size_two / size_one, 4),
        **{f"{k}_s": round(v, 3) for k, v in best.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "load_avg": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
