"""`lake compare` the other way round, and a reference trade_num that is not a whole number.

* Lake candles the reference lacks were not reported: within the hours the reference covers (per
  offset, the candle_begin_time values it has rows of), our candles of reference symbols with no
  reference row are counted (``extra``, also per series in the detail) and our symbols with candles
  in those hours that the reference never names are listed (``unreferenced_symbols``). Neither
  changes the exit code: the reference may leave symbols out on purpose.
* A trade_num written ``12.5`` was truncated to 12 and compared as a match; it is a ``DataError``
  (exit 4) naming the file and the column. ``12.0`` (a float writer's whole number) is still 12.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

import tests.quantclass.test_compare_sim as compare_sim
from lake.commands import compare as compare_command
from lake.errors import DataError
from lake.quantclass.compare import COLUMNS, compare_quantclass
from lake.quantclass.files import read_candles_csv
from lake.settings import Settings
from lake.sim import SimHandle
from lake.store.klines import write_klines
from lake.transform.build import build_offsets, scan_offsets
from tests.test_views_compare_edges import HEADER, _compare, _lake_with_offsets, _line, _reference_dir
from tests.transform.helpers import T0_MS, random_candles

H = 3_600_000
HALF = H // 2
# pytest fixtures of the simulator comparison (a simulator with the Quantclass routes, and a lake of
# its last 6 hours with 1h offsets), shared rather than written again
sim = compare_sim.sim
root = compare_sim.root

# Our symbols with candles in the reference's hours that the reference never names: sorted, so the
# summary line shows S00USDT … S09USDT and then " …".
UNREFERENCED = [f"S{i:02d}USDT" for i in range(11)] + ["SOLUSDT"]


def _cli(*args: str) -> Result:
    app = typer.Typer()
    compare_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    return CliRunner().invoke(app, ["compare", "--type", "usdt_perp", *args])


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A lake (offsets 0m and 30m, 6 hours from T0) and a reference that differ in both directions.

    Reference 0m: BTCUSDT at hours 1, 2 and 4 (not 3), ETHUSDT at 1-4, ZZZUSDT (not in the lake) at
    2; its window is hours 1-4. Reference 30m: BTCUSDT at 1:30 and 2:30 only, ETHUSDT nowhere; its
    window is 1:30-2:30. So ours the reference lacks: BTCUSDT 0m at 3:00 and ETHUSDT 30m at 1:30 and
    2:30 (3 candles). BTCUSDT 30m at 3:30 is inside the 0m window but not the 30m one, and hours 0
    and 5 are outside both: not counted. OLDUSDT's candles are all a day earlier: not listed.
    """
    tmp = tmp_path_factory.mktemp("both_ways")
    lake = tmp / "lake"
    names = ["BTCUSDT", "ETHUSDT", *UNREFERENCED]
    for seed, symbol in enumerate(names):
        df = random_candles(seed, 300_000, 72, hole_rate=0.0, zero_rate=0.0)
        write_klines(lake, "usdt_perp", "5m", symbol, df)
    old = random_candles(99, 300_000, 72, start_ms=T0_MS - 30 * H, hole_rate=0.0, zero_rate=0.0)
    write_klines(lake, "usdt_perp", "5m", "OLDUSDT", old)
    build_offsets(lake, "usdt_perp", "1h", offsets=["0m", "30m"])

    bins = scan_offsets(lake, "usdt_perp", "1h").collect()

    def row(offset: str, symbol: str, at_ms: int) -> dict[str, object]:
        t = pl.lit(at_ms).cast(pl.Datetime("ms", "UTC"))
        rows = bins.filter(
            (pl.col("offset") == offset) & (pl.col("symbol") == symbol) & (pl.col("candle_begin_time") == t)
        ).to_dicts()
        assert len(rows) == 1, (offset, symbol, at_ms)
        return rows[0]

    zzz = row("0m", "BTCUSDT", T0_MS + 2 * H) | {"symbol": "ZZZUSDT"}
    lines_0m = [_line(row("0m", "BTCUSDT", T0_MS + h * H)) for h in (1, 2, 4)]
    lines_0m += [_line(row("0m", "ETHUSDT", T0_MS + h * H)) for h in (1, 2, 3, 4)]
    ref = _reference_dir(tmp / "ref", [*lines_0m, _line(zzz)])  # the 0m file, a 7z
    lines_30m = [_line(row("30m", "BTCUSDT", T0_MS + h * H + HALF)) for h in (1, 2)]
    (ref / "202401010800-swap_1h30m.csv").write_text("\n".join([HEADER, *lines_30m]) + "\n")
    return lake, ref


def test_lake_candles_and_symbols_the_reference_lacks_are_counted(both_ways: tuple[Path, Path]) -> None:
    lake, ref = both_ways
    result = _compare(lake, ref)
    assert (result.reference_rows, result.matched, result.missing) == (9, 9, 0)
    assert result.absent_symbols == ["ZZZUSDT"]
    assert result.extra == 3
    assert result.unreferenced_symbols == UNREFERENCED
    assert all(result.max_error(c) == 0.0 for c in COLUMNS)  # what both hold still matches

    series = result.detail.unique(["offset", "symbol"]).sort("offset", "symbol")
    got = {
        (r["offset"], r["symbol"]): (r["reference_rows"], r["matched"], r["missing"], r["extra"])
        for r in series.iter_rows(named=True)
    }
    assert got == {
        ("0m", "BTCUSDT"): (3, 3, 0, 1),
        ("0m", "ETHUSDT"): (4, 4, 0, 0),
        ("30m", "BTCUSDT"): (2, 2, 0, 0),
        ("30m", "ETHUSDT"): (0, 0, 0, 2),  # a series only we hold: nothing compared, 2 extra
    }
    eth_30m = result.detail.filter((pl.col("offset") == "30m") & (pl.col("symbol") == "ETHUSDT"))
    assert eth_30m["column"].sort().to_list() == sorted(COLUMNS)
    assert eth_30m["max_rel_error"].null_count() == len(COLUMNS)
    # compared symbols and offsets are those of the reference's series the lake holds, as before
    assert result.symbols == 2 and result.offsets == ("0m", "30m")


def test_json_and_summary_report_them_and_the_exit_code_stays_0(both_ways: tuple[Path, Path]) -> None:
    lake, ref = both_ways
    r = _cli("--root", str(lake), "--reference-dir", str(ref), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["extra"] == 3
    assert out["unreferenced_symbols"] == UNREFERENCED
    assert (out["missing"], out["absent_symbols"]) == (0, ["ZZZUSDT"])

    r = _cli("--root", str(lake), "--reference-dir", str(ref))
    assert r.exit_code == 0, r.output
    lines = [" ".join(ln.split()) for ln in r.output.splitlines()]
    assert (
        "2 symbols × 2 offsets, 9/9 reference candles matched, 0 missing from the lake, "
        "3 lake candles in the reference's hours not in the reference"
    ) in lines
    shown = ", ".join(UNREFERENCED[:10])
    assert f"12 lake symbols in the reference's hours not in the reference: {shown} …" in lines


def test_the_simulators_reference_leaves_out_nothing_of_ours_in_its_hours(sim: SimHandle, root: Path) -> None:
    """The lake holds 6 hours, each reference file the latest 2: the earlier hours are not extra."""
    held = scan_offsets(root, "usdt_perp", "1h").select(pl.len()).collect().item()
    result = asyncio.run(compare_quantclass(Settings(root=str(root), sim_url=sim.base_url), "usdt_perp"))
    assert result.matched == result.reference_rows == 2 * 12 * result.symbols < held
    assert result.extra == 0 and result.unreferenced_symbols == []
    assert result.detail["extra"].unique().to_list() == [0]


def test_hours_between_two_saved_reference_files_are_not_extra(
    both_ways: tuple[Path, Path], tmp_path: Path
) -> None:
    """Files saved hours (or days) apart cover their own hours, not the ones between them: our
    candles at hours 2 and 3, where the reference has no row of any symbol, are not extra."""
    lake, _ = both_ways
    bins = scan_offsets(lake, "usdt_perp", "1h").filter(pl.col("offset") == "0m").collect()
    at = pl.col("candle_begin_time").dt.epoch("ms")
    rows = bins.filter(
        pl.col("symbol").is_in(["BTCUSDT", "ETHUSDT"]) & at.is_in([T0_MS + H, T0_MS + 4 * H])
    ).to_dicts()
    assert len(rows) == 4
    result = _compare(lake, _reference_dir(tmp_path / "ref", [_line(r) for r in rows]))
    assert (result.reference_rows, result.matched, result.extra) == (4, 4, 0)
    assert result.unreferenced_symbols == UNREFERENCED  # they hold hours 1 and 4 too


# ---------------------------------------------------------------------------------------------------
# trade_num


def test_a_fractional_trade_num_is_a_data_error_naming_the_file_and_column(tmp_path: Path) -> None:
    rows = _lake_with_offsets(tmp_path / "lake")
    half = f"{rows[1]['trade_num']}.5"  # truncated, it equals ours: the mismatch went unseen
    ref = _reference_dir(tmp_path / "ref", [_line(rows[0]), _line(rows[1], trade_num=half)])
    r = _cli("--root", str(tmp_path / "lake"), "--reference-dir", str(ref))
    assert isinstance(r.exception, DataError), r.output
    assert r.exception.exit_code == 4
    message = str(r.exception)
    assert "202401010800-swap_1h0m.7z" in message and "trade_num" in message and repr(half) in message


def test_whole_trade_nums_written_as_floats_are_read_exactly() -> None:
    line = "2024-10-08 05:00:00,BTCUSDT,1.5,2.25,0.5,1.75,10.125,15.5,{},4.25,6.5,HasSwap"
    written = ["7", "12.0", " 12.000 ", "1e3", "9007199254740993", "nan", ""]
    csv = "\n".join([HEADER, *(line.format(w) for w in written)]) + "\n"
    got = read_candles_csv(csv.encode())
    assert got.schema["trade_num"] == pl.Int64
    assert got["trade_num"].to_list() == [7, 12, 12, 1000, 9007199254740993, None, None]
    for bad in ("12.5", "inf", "1e30"):
        with pytest.raises(DataError, match=f"trade_num '{bad}'"):
            read_candles_csv("\n".join([HEADER, line.format("7"), line.format(bad)]).encode())


def test_the_symbols_compare_holds_come_from_listings_and_match_a_scan(tmp_path: Path) -> None:
    """``absent_symbols`` used to read the offsets' whole history for the lake's symbols; they now
    come from listings (``offsets_symbols``), which must name the same symbols a scan finds: per
    offset, and not a symbol whose partitions were emptied (its directories left behind)."""
    from lake.transform.build import offsets_symbols

    lake = tmp_path / "lake"
    for seed, symbol in enumerate(["BTCUSDT", "ETHUSDT", "SOLUSDT"]):
        write_klines(lake, "usdt_perp", "5m", symbol, random_candles(seed, 300_000, 72, hole_rate=0.0))
    build_offsets(lake, "usdt_perp", "1h", offsets=["0m", "30m"])
    emptied = list((lake / "offsets").rglob("offset=30m/symbol=ETHUSDT/date=*/data.parquet"))
    assert emptied
    for f in emptied:
        f.unlink()

    def scanned(offsets: list[str] | None) -> set[str]:
        lf = scan_offsets(lake, "usdt_perp", "1h", offsets=offsets)
        return set(lf.select("symbol").unique().collect()["symbol"].to_list())

    for offsets in (None, ["0m"], ["30m"], ["0m", "30m"], ["0h"]):
        assert offsets_symbols(lake, "usdt_perp", "1h", offsets) == scanned(offsets), offsets
    assert offsets_symbols(lake, "usdt_perp", "1h", ["30m"]) == {"BTCUSDT", "SOLUSDT"}
    assert offsets_symbols(lake, "usdt_perp", "1h", ["0m"]) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}

    # a symbol whose bins of an offset are only in the offsets tail (its period files gone) is named
    later = random_candles(9, 300_000, 72, start_ms=T0_MS + 72 * 300_000, hole_rate=0.0)
    write_klines(lake, "usdt_perp", "5m", "SOLUSDT", later)
    build_offsets(lake, "usdt_perp", "1h", offsets=["0m", "30m"])  # (an appended day: a tail run)
    assert (lake / "offsets_tail").exists()
    for f in (lake / "offsets").rglob("offset=0m/symbol=SOLUSDT/date=*/data.parquet"):
        f.unlink()
    assert (
        scan_offsets(lake, "usdt_perp", "1h", offsets=["0m"])
        .filter(pl.col("symbol") == "SOLUSDT")
        .collect()
        .height
    )
    for offsets in (None, ["0m"], ["30m"]):
        assert offsets_symbols(lake, "usdt_perp", "1h", offsets) == scanned(offsets), offsets
    assert "SOLUSDT" in offsets_symbols(lake, "usdt_perp", "1h", ["0m"])
