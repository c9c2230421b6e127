"""Archive ingest and ``--source auto`` against the simulator, checked against its ground truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from lake.errors import DataError, NotFoundError, UpstreamError
from lake.ingest.archive import listing
from lake.ingest.archive.hybrid import archive_backfill
from lake.ingest.archive.runner import download_dir
from lake.schema import KLINE_COLUMNS
from lake.settings import Settings
from lake.sim.config import FaultConfig, SimConfig
from lake.sim.server import SimServer
from lake.store.coverage import coverage
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines

NOW = "2024-03-10T12:00:00"
START = dt.datetime(2024, 1, 20, tzinfo=dt.UTC)
IV = "5m"
TT = "usdt_spot"


def sim_config(**faults: object) -> SimConfig:
    return SimConfig(
        start=NOW,
        speed=0,
        history_days=80,
        n_symbols=3,
        n_symbols_by_market={"spot": 10, "um": 6},
        spot_us_from="2024-03-01",  # µs timestamps in the window's March files, ms before
        futures_header_fraction={"um": 0.5, "cm": 0.3},  # futures files with and without a header
        faults=FaultConfig(**faults),  # type: ignore[arg-type]
    )


def settings_for(sim: SimServer, tmp_path: Path) -> Settings:
    return Settings(root=str(tmp_path / "lake"), sim_url=sim.base_url)


def lake_frame(s: Settings, symbols: list[str] | None = None) -> pl.DataFrame:
    return scan_klines(s.root, TT, IV, symbols).collect().sort("symbol", "candle_begin_time")


def truth(sim: SimServer, symbols: list[str], start: dt.datetime) -> pl.DataFrame:
    return sim.market.truth(TT, IV, symbols, start).sort("symbol", "candle_begin_time")


def assert_equal_to_truth(sim: SimServer, s: Settings, symbols: list[str]) -> pl.DataFrame:
    got = lake_frame(s, symbols)
    # Whole archive files are ingested: a monthly file brings the days of its month before START too.
    want = truth(sim, symbols, got["candle_begin_time"].min())  # type: ignore[arg-type]
    assert got["candle_begin_time"].min() <= START
    cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
    assert got.height == want.height
    assert got.select(cols).equals(want.select(cols))
    return got


async def test_auto_archive_then_rest_equals_truth(tmp_path: Path) -> None:
    async with SimServer(sim_config(missing_days=("ETHUSDT/2024-03-05",))) as sim:
        s = settings_for(sim, tmp_path)
        aw = sim.market.awkward
        delisted = aw.delisted["spot"]
        trading = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        assert delisted and not set(delisted) & set(trading)
        res = await archive_backfill(
            LakeFS(s.root), [TT], IV, settings=s, start=START, source="auto", include_delisted=True
        )
        (arch,) = res.archive
        assert set(delisted) <= set(arch.symbols), "--include-delisted picks the archive-only symbols"
        assert arch.files_downloaded > 0 and res.rest is not None
        symbols = sorted(set(trading) | set(delisted))
        got = assert_equal_to_truth(sim, s, symbols)

        # The day the archive lacks and the half day it has not published yet came from REST.
        by_src = got.group_by("source").len()
        assert set(by_src["source"]) == {"archive", "rest"}
        eth = got.filter(
            pl.col("symbol") == "ETHUSDT", pl.col("candle_begin_time").dt.date() == dt.date(2024, 3, 5)
        )
        assert eth.height == 288 and eth["source"].unique().to_list() == ["rest"]
        today = got.filter(pl.col("candle_begin_time") >= dt.datetime(2024, 3, 10, tzinfo=dt.UTC))
        assert today["source"].unique().to_list() == ["rest"]

        # Maintenance holes: neither archive nor REST has candles there; recorded as exchange holes.
        cov = {c.symbol: c for c in coverage(s.root, TT, IV)}
        assert cov["BTCUSDT"].missing == 0
        if any(w[0] >= START.timestamp() * 1000 for w in aw.maintenance["spot"]):
            assert cov["BTCUSDT"].exchange_missing > 0

        # A re-run asks the archive for no file and changes nothing.
        again = await archive_backfill(
            LakeFS(s.root), [TT], IV, settings=s, start=START, include_delisted=True
        )
        assert again.archive[0].files_planned == 0

        # Binance re-uploads a day: detected from the listing and re-ingested; the lake follows.
        sim.control_faults({"reupload": [{"market": "spot", "symbol": "BTCUSDT", "date": "2024-03-02"}]})
        third = await archive_backfill(
            LakeFS(s.root), [TT], IV, settings=s, start=START, include_delisted=True
        )
        assert third.archive[0].files_reuploaded >= 1
        assert_equal_to_truth(sim, s, symbols)


async def test_persistent_checksum_mismatch_fails_and_leaves_the_lake_untouched(tmp_path: Path) -> None:
    # The bad file's day stays out of the lake (REST included) and the run fails naming it, but only
    # after everything else is done: the other symbol's days, the day the archive lacks (REST) and
    # the days up to now that the archive has not published yet. It used to stop before REST.
    bad = "BTCUSDT-5m-2024-03-02.zip"
    faults = {"wrong_checksums": {bad: None}, "missing_days": ("ETHUSDT/2024-03-03",)}
    async with SimServer(sim_config(**faults)) as sim:
        s = settings_for(sim, tmp_path)
        run = dict(settings=s, start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC), symbols=["BTCUSDT", "ETHUSDT"])
        with pytest.raises(DataError, match=bad):
            await archive_backfill(LakeFS(s.root), [TT], IV, source="auto", **run)  # type: ignore[arg-type]
        got = lake_frame(s)
        want = truth(sim, ["BTCUSDT", "ETHUSDT"], run["start"])  # type: ignore[arg-type]
        day2 = (pl.col("symbol") == "BTCUSDT") & (
            pl.col("candle_begin_time").dt.date() == dt.date(2024, 3, 2)
        )
        assert got.filter(day2).height == 0, "nothing of the bad day"
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        assert got.select(cols).equals(want.filter(~day2).select(cols)), "everything else is in"
        eth3 = got.filter((pl.col("symbol") == "ETHUSDT") & (pl.col("candle_begin_time").dt.day() == 3))
        assert eth3["source"].unique().to_list() == ["rest"]
        assert not list(download_dir(s).rglob("*.zip*")), "no zip or partial download left"
        (cov,) = coverage(s.root, TT, IV, ["BTCUSDT"])
        assert [(h.start, h.kind, h.missing) for h in cov.holes if h.kind == "missing"] == [
            (dt.datetime(2024, 3, 2, tzinfo=dt.UTC), "missing", 288)
        ], "the bad day is not recorded as empty"
        # Once Binance fixes the checksum, the next run heals the day.
        sim.control_faults({"wrong_checksums": {}})
        again = await archive_backfill(LakeFS(s.root), [TT], IV, source="auto", **run)  # type: ignore[arg-type]
        assert again.archive[0].files_downloaded == 1
        assert (
            lake_frame(s).select(cols).equals(truth(sim, ["BTCUSDT", "ETHUSDT"], run["start"]).select(cols))
        )  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [503, 403])
async def test_archive_file_that_cannot_be_downloaded_is_filled_over_rest(
    tmp_path: Path, status: int
) -> None:
    # A listed file the archive never serves (503, or 403: CloudFront's WAF block) is a missed
    # shortcut, not bad data: ``auto`` fills its day over REST and succeeds; ``archive`` alone
    # fails naming it. A 403 used to count as a bad file: its day was kept out of the lake.
    gone = "ETHUSDT-5m-2024-03-02.zip"
    async with SimServer(sim_config(unserved_zips=(gone,), unserved_status=status)) as sim:
        s = settings_for(sim, tmp_path)
        run = dict(settings=s, start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC), symbols=["ETHUSDT"])
        with pytest.raises(UpstreamError, match=gone):
            await archive_backfill(LakeFS(s.root), [TT], IV, source="archive", **run)  # type: ignore[arg-type]
        res = await archive_backfill(LakeFS(s.root), [TT], IV, source="auto", **run)  # type: ignore[arg-type]
        assert len(res.archive[0].failed) == 1
        got = lake_frame(s)
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        want = truth(sim, ["ETHUSDT"], run["start"])  # type: ignore[arg-type]
        assert got.select(cols).equals(want.select(cols))
        day2 = got.filter(pl.col("candle_begin_time").dt.date() == dt.date(2024, 3, 2))
        assert day2.height > 0 and day2["source"].unique().to_list() == ["rest"]


async def test_corrupt_zip_fails_loudly(tmp_path: Path) -> None:
    bad = "ETHUSDT-5m-2024-03-01.zip"
    async with SimServer(sim_config(corrupt_zips=(bad,))) as sim:
        s = settings_for(sim, tmp_path)
        with pytest.raises(DataError, match=bad):
            await archive_backfill(
                LakeFS(s.root), [TT], IV, settings=s, start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
                end=dt.datetime(2024, 3, 2, tzinfo=dt.UTC), symbols=["ETHUSDT"], source="archive",
            )  # fmt: skip
        assert lake_frame(s).height == 0


async def test_futures_files_with_and_without_header(tmp_path: Path) -> None:
    async with SimServer(sim_config()) as sim:
        s = settings_for(sim, tmp_path)
        start = dt.datetime(2024, 2, 20, tzinfo=dt.UTC)
        res = await archive_backfill(
            LakeFS(s.root), ["usdt_perp"], "1h", settings=s, start=start,
            end=dt.datetime(2024, 3, 9, tzinfo=dt.UTC), symbols=["BTCUSDT", "ETHUSDT"], source="archive",
        )  # fmt: skip
        assert res.archive[0].files_downloaded >= 2
        got = scan_klines(s.root, "usdt_perp", "1h").collect().sort("symbol", "candle_begin_time")
        want = sim.market.truth("usdt_perp", "1h", ["BTCUSDT", "ETHUSDT"], got["candle_begin_time"].min())
        want = want.filter(pl.col("candle_begin_time") < dt.datetime(2024, 3, 9, tzinfo=dt.UTC))
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        assert got.select(cols).equals(want.sort("symbol", "candle_begin_time").select(cols))


async def test_kill_mid_download_then_rerun(tmp_path: Path) -> None:
    import asyncio
    import hashlib
    import signal
    import sys

    async with SimServer(sim_config()) as sim:
        s = settings_for(sim, tmp_path)
        ddir = download_dir(s)
        cmd = [
            sys.executable, "-m", "lake.cli", "backfill", "--type", TT, "--interval", IV,
            "--start", "2024-01-20", "--end", "2024-03-09", "--source", "archive", "--keep-zips",
            "--sim-url", sim.base_url, "--root", s.root,
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        # Killed as soon as a zip was written (a .part file or a final one): the other workers'
        # downloads are in flight then.
        while proc.returncode is None and loop.time() < deadline:
            if ddir.exists() and any(".part-" in p.name or p.suffix == ".zip" for p in ddir.rglob("*")):
                break
            await asyncio.sleep(0.002)
        assert proc.returncode is None, "the run ended before a download was caught in flight"
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        # What a writer killed between creating and renaming its .part file leaves behind (the window
        # is too short to hit reliably): the rerun must remove it, not trust it.
        stale = ddir / f"data/spot/daily/klines/ETHUSDT/5m/ETHUSDT-5m-2024-03-07.zip.part-{proc.pid}-0badf00d"
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"PK\x03\x04 half a zip")

        # Whatever carries a final name was verified before it got that name.
        finals = [p for p in ddir.rglob("*.zip")]
        for p in finals:
            key = p.relative_to(ddir).as_posix()
            f, _ = sim.archive.parse_key(key)
            assert f is not None
            assert hashlib.sha256(p.read_bytes()).hexdigest() == sim.archive.checksum_text(f).split()[0]
        # A truncated zip under a final name (another tool, a disk error) must not be trusted either.
        victim = ddir / "data/spot/daily/klines/BTCUSDT/5m/BTCUSDT-5m-2024-03-08.zip"
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(b"PK\x03\x04 truncated")

        res = await archive_backfill(
            LakeFS(s.root), [TT], IV, settings=s, start=START, end=dt.datetime(2024, 3, 9, tzinfo=dt.UTC),
            source="archive",
        )  # fmt: skip
        assert res.archive[0].files_planned > 0
        assert not [p for p in ddir.rglob("*") if ".part-" in p.name], "stale partial downloads are removed"
        symbols = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        got = lake_frame(s, symbols).filter(
            pl.col("candle_begin_time") < dt.datetime(2024, 3, 9, tzinfo=dt.UTC)
        )
        want = truth(sim, symbols, got["candle_begin_time"].min())  # type: ignore[arg-type]
        want = want.filter(pl.col("candle_begin_time") < dt.datetime(2024, 3, 9, tzinfo=dt.UTC))
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        assert got.select(cols).equals(want.select(cols))


async def test_static_archive_serves_every_zip_built_once(tmp_path: Path) -> None:
    """The benchmark's static mode (POST /_sim/archive): a second ingest into a new lake is served
    the zips built for the first, byte for byte (same checksums), and a re-upload is built anew."""
    import aiohttp

    async with SimServer(sim_config()) as sim, aiohttp.ClientSession() as http:
        url = f"{sim.base_url}/_sim/archive"
        async with http.post(url, json={"static": True}) as resp:
            assert resp.status == 200 and (await resp.json())["static"] is True
        async with http.post(url, json={"static": "yes"}) as resp:
            assert resp.status == 400
        symbols = ["BTCUSDT", "ETHUSDT"]
        first = settings_for(sim, tmp_path / "a")
        await archive_backfill(
            LakeFS(first.root), [TT], IV, settings=first, start=START, symbols=symbols, source="archive"
        )
        async with http.get(url) as resp:
            built = await resp.json()
        assert built["zips_built"] == built["static_files"] > 0
        second = settings_for(sim, tmp_path / "b")
        await archive_backfill(
            LakeFS(second.root), [TT], IV, settings=second, start=START, symbols=symbols, source="archive"
        )
        async with http.get(url) as resp:
            assert (await resp.json())["zips_built"] == built["zips_built"], "nothing built the second time"
        assert lake_frame(first, symbols).equals(lake_frame(second, symbols))

        sim.control_faults({"reupload": [{"market": "spot", "symbol": "BTCUSDT", "date": "2024-03-02"}]})
        third = await archive_backfill(
            LakeFS(second.root), [TT], IV, settings=second, start=START, symbols=symbols, source="archive"
        )
        assert third.archive[0].files_reuploaded == 1
        async with http.get(url) as resp:
            assert (await resp.json())["zips_built"] == built["zips_built"] + 1
        got = lake_frame(second, ["BTCUSDT"])
        want = truth(sim, ["BTCUSDT"], got["candle_begin_time"].min())  # type: ignore[arg-type]
        want = want.filter(pl.col("candle_begin_time") <= got["candle_begin_time"].max())  # archive only
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        assert got.height > 0 and got.select(cols).equals(want.select(cols))


async def test_unknown_symbol_fails_but_a_delisted_archive_symbol_is_fetched(tmp_path: Path) -> None:
    """--symbols with a name neither exchangeInfo nor the archive knows (a typo) is an error, not a
    silent success with 0 symbols; a delisted symbol is fetched when named."""
    async with SimServer(sim_config()) as sim:
        s = settings_for(sim, tmp_path)
        window = dict(
            start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC), end=dt.datetime(2024, 3, 2, tzinfo=dt.UTC)
        )
        with pytest.raises(NotFoundError, match="BTCUSDX"):
            await archive_backfill(
                LakeFS(s.root), [TT], IV, settings=s, symbols=["BTCUSDX", "BTCUSDT"], **window
            )
        assert not (tmp_path / "lake" / "klines").exists() or lake_frame(s).height == 0
        delisted = sim.market.awkward.delisted["spot"][0]
        res = await archive_backfill(LakeFS(s.root), [TT], IV, settings=s, symbols=[delisted], **window)
        assert res.archive[0].files_downloaded >= 1
        assert lake_frame(s, [delisted]).height > 0


async def test_symbol_unknown_to_exchange_info_with_the_archive_listing_down_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the archive could hold a symbol exchangeInfo does not list: with its listing unreachable
    the run fails (transient) instead of ending with nothing for that symbol and exit 0."""
    monkeypatch.setattr(listing, "_BACKOFF_S", 0.01)  # (the retries' waits, 7.5 s in all)
    async with SimServer(sim_config()) as sim:
        s = Settings(root=str(tmp_path / "lake"), sim_url=sim.base_url, archive_list_url="http://127.0.0.1:9")
        window = dict(
            start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC), end=dt.datetime(2024, 3, 2, tzinfo=dt.UTC)
        )
        # (a name of the trade type's shape: one that cannot be a USDT pair fails without the archive)
        with pytest.raises(UpstreamError, match="OLDCOINUSDT"):
            await archive_backfill(LakeFS(s.root), [TT], IV, settings=s, symbols=["OLDCOINUSDT"], **window)
        with pytest.raises(NotFoundError, match="BTCUSDX"):
            await archive_backfill(LakeFS(s.root), [TT], IV, settings=s, symbols=["BTCUSDX"], **window)


async def test_a_whitelist_over_several_trade_types_files_each_symbol_under_its_own(tmp_path: Path) -> None:
    """`-t usdt_spot -t btc_spot --symbols BTCUSDT,ETHBTC`: each pair lands under the trade type that
    lists it (the archive part used to ingest both under both, since the market's archive has both);
    a symbol of the market that none of the requested types lists is an error before anything runs."""
    async with SimServer(sim_config()) as sim:
        s = settings_for(sim, tmp_path)
        window = dict(
            start=dt.datetime(2024, 3, 1, tzinfo=dt.UTC), end=dt.datetime(2024, 3, 2, tzinfo=dt.UTC)
        )
        res = await archive_backfill(
            LakeFS(s.root), ["usdt_spot", "btc_spot"], "1d", settings=s,
            symbols=["BTCUSDT", "ETHBTC"], source="archive", **window,
        )  # fmt: skip
        assert {r.trade_type: r.symbols for r in res.archive} == {
            "usdt_spot": ["BTCUSDT"],
            "btc_spot": ["ETHBTC"],
        }
        kl = tmp_path / "lake" / "klines"
        stored = sorted((p.parents[3].name, p.parents[1].name) for p in kl.rglob("data.parquet"))
        assert stored == [
            ("trade_type=btc_spot", "symbol=ETHBTC"),
            ("trade_type=usdt_spot", "symbol=BTCUSDT"),
        ]
        with pytest.raises(NotFoundError, match="ETHBTC"):
            await archive_backfill(
                LakeFS(s.root), ["usdt_spot"], "1d", settings=s, symbols=["ETHBTC"], **window
            )
