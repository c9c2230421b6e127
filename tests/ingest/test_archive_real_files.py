"""Archive ingest against files built byte for byte as data.binance.vision
publishes them (binance.md §5-6), served by a real aiohttp server (``FakeArchive``), and the lake
compared with the truth afterwards."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from lake.ingest.archive.parse import parse_kline_csv
from lake.ingest.archive.plan import DAILY, MONTHLY, ArchiveFile
from lake.ingest.archive.runner import ingest_archive
from lake.settings import Settings
from lake.store.klines import scan_klines, write_klines
from tests.ingest.archive_fakes import DAY_MS, MIN_MS, FakeArchive, csv, day_opens, zip_bytes

JAN = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
FEB = int(dt.datetime(2024, 2, 1, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3_600_000
SYM = "BTCUSDT"


def settings(tmp_path: Path, arch: FakeArchive) -> Settings:
    return Settings(
        root=str(tmp_path / "lake"),
        archive_url=f"{arch.base}/archive",
        archive_list_url=f"{arch.base}/archive-bucket",
    )


def opens_stored(s: Settings, tt: str = "usdt_spot", iv: str = "1m", sym: str = SYM) -> list[int]:
    df = scan_klines(s.root, tt, iv, [sym]).collect().sort("candle_begin_time")
    return df["candle_begin_time"].dt.epoch("ms").to_list()


def daily(d: dt.date, sym: str = SYM, market: str = "spot", iv: str = "1m") -> ArchiveFile:
    return ArchiveFile(market, DAILY, sym, iv, d)


def monthly(d: dt.date, sym: str = SYM, market: str = "spot", iv: str = "1m") -> ArchiveFile:
    return ArchiveFile(market, MONTHLY, sym, iv, d)


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


async def test_truncated_monthly_file_is_completed_from_daily_files_in_the_same_run(tmp_path: Path) -> None:
    """binance-public-data #320/#403/#359: a monthly file holding only the first days of its month.
    The daily files of the other days are published; one run must leave the lake complete (and not
    silently short, as `--source archive` does not fall back to REST), and a second run must
    download nothing."""
    async with FakeArchive() as arch:
        arch.put(monthly(dt.date(2024, 1, 1)).key, zip_bytes(csv(list(range(JAN, JAN + 7 * DAY_MS, MIN_MS)))))
        for d in range(31):
            arch.put(daily(dt.date(2024, 1, 1 + d)).key, zip_bytes(csv(day_opens(JAN + d * DAY_MS))))
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert opens_stored(s) == list(range(JAN, FEB, MIN_MS))
        assert rep.rows == 31 * 1440
        again = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert (again.files_planned, again.files_downloaded) == (0, 0)


async def test_rows_outside_the_window_do_not_make_a_window_day_complete(tmp_path: Path) -> None:
    """The lake holds REST rows for 2024-01-01 00:00-12:00. `--source archive --start 2024-01-01T12:00
    --end 2024-01-02`: the window's twelve hours are missing and the daily file has them, but the
    plan counted the day's rows outside the window (720) against the window's 720 candles and
    skipped the day: nothing fetched, nothing reported lacking, the hours silently absent."""
    async with FakeArchive() as arch:
        arch.put(daily(dt.date(2024, 1, 1)).key, zip_bytes(csv(day_opens(JAN))))
        s = settings(tmp_path, arch)
        morning = parse_kline_csv(
            csv(list(range(JAN, JAN + 12 * HOUR, MIN_MS))), start_ms=JAN, end_ms=JAN + DAY_MS, source="rest"
        )
        write_klines(s.root, "usdt_spot", "1m", SYM, morning)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN + 12 * HOUR, JAN + DAY_MS)
        assert rep.lacking == {}
        assert opens_stored(s) == day_opens(JAN)


# --------------------------------------------------------------------------------------------------
# Real-world file shapes, end to end (list, download, verify, parse, write, record, rerun)
# --------------------------------------------------------------------------------------------------


class QuirkyArchive(FakeArchive):
    """``FakeArchive`` whose ``.CHECKSUM`` bodies can take the shapes seen in the wild."""

    def __init__(self, checksum_style: str = "binance") -> None:
        super().__init__(max_keys=2)  # tiny pages: every listing is paginated
        self.style = checksum_style

    def _checksum(self, key: str) -> bytes:
        import hashlib

        name = key.rsplit("/", 1)[-1]
        h = hashlib.sha256(self.files[key]).hexdigest()
        return {
            "binance": f"{h}  {name}",  # two spaces, no trailing newline
            "upper-one-space-nl": f"{h.upper()} {name}\n",
            "binary-mode-crlf": f"{h} *{name}\r\n",
            "hash-only": f"{h}\n",
        }[self.style].encode()


def zip_custom(members: list[tuple[str, bytes | None]]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            if data is None:
                zf.writestr(zipfile.ZipInfo(name + "/"), b"")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


CM_HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    b"taker_buy_quote_volume,ignore\r\n"
)


def cm_rows(opens: list[int], step: int, *, eol: bytes = b"\r\n", final: bool = False) -> bytes:
    # COIN-M: volume in contracts, "quote_volume" is base volume, scientific notation and 0E-8
    lines = [
        f"{t},65000.1,65010.0,64990.5,65001.2,1234,{t + step - 1},1.89840510,{t % 97},617,9.49E-1,0".encode()
        for t in opens
    ]
    return eol.join(lines) + (eol if final else b"")


async def test_coin_m_delivery_contract_with_header_crlf_and_no_final_newline(tmp_path: Path) -> None:
    sym = "BTCUSD_250328"
    d0 = dt.date(2025, 1, 6)
    t0 = int(dt.datetime(2025, 1, 6, tzinfo=dt.UTC).timestamp() * 1000)
    async with QuirkyArchive("upper-one-space-nl") as arch:
        for i in range(3):
            day = t0 + i * DAY_MS
            body = (CM_HEADER if i != 1 else b"") + cm_rows(list(range(day, day + DAY_MS, HOUR)), HOUR)
            f = daily(d0 + dt.timedelta(days=i), sym, "cm", "1h")
            # a directory entry and a member named unlike the zip
            arch.put(f.key, zip_custom([("tmp", None), (f"tmp/{sym}-1h.csv", body)]))
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "coin_deli", "1h", [sym], t0, t0 + 3 * DAY_MS)
        assert (rep.files_downloaded, rep.rows, rep.failed) == (3, 72, [])
        df = scan_klines(s.root, "coin_deli", "1h", [sym]).collect().sort("candle_begin_time")
        assert df["candle_begin_time"].dt.epoch("ms").to_list() == list(range(t0, t0 + 3 * DAY_MS, HOUR))
        assert df["volume"].unique().to_list() == [1234.0]
        assert df["quote_volume"].unique().to_list() == [1.8984051]
        assert df["taker_buy_quote_asset_volume"].unique().to_list() == [0.949]
        again = await ingest_archive(s, "coin_deli", "1h", [sym], t0, t0 + 3 * DAY_MS)
        assert (again.files_planned, again.requests) == (0, 0)


async def test_spot_1s_in_microseconds_and_1mo_monthly_files(tmp_path: Path) -> None:
    t0 = int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    async with QuirkyArchive("binary-mode-crlf") as arch:
        f1s = daily(dt.date(2025, 1, 1), iv="1s")
        arch.put(f1s.key, zip_bytes(csv(list(range(t0, t0 + DAY_MS, 1000)), us=True, step_ms=1000)))
        for m in (1, 2):
            start = int(dt.datetime(2025, m, 1, tzinfo=dt.UTC).timestamp() * 1000)
            nxt = int(dt.datetime(2025, m + 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
            arch.put(
                monthly(dt.date(2025, m, 1), iv="1M").key,
                zip_bytes(csv([start], us=True, step_ms=nxt - start)),
            )
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_spot", "1s", [SYM], t0, t0 + DAY_MS)
        assert (rep.rows, rep.failed) == (86_400, [])
        assert opens_stored(s, iv="1s") == list(range(t0, t0 + DAY_MS, 1000))
        mar = int(dt.datetime(2025, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
        rep = await ingest_archive(s, "usdt_spot", "1M", [SYM], t0, mar)
        assert (rep.rows, rep.failed, rep.files_downloaded) == (2, [], 2)
        assert opens_stored(s, iv="1M") == [
            t0,
            int(dt.datetime(2025, 2, 1, tzinfo=dt.UTC).timestamp() * 1000),
        ]
        assert (await ingest_archive(s, "usdt_spot", "1M", [SYM], t0, mar)).files_planned == 0


async def test_cjk_symbol_keys_are_listed_and_fetched(tmp_path: Path) -> None:
    sym = "币安人生USDT"
    async with QuirkyArchive("hash-only") as arch:
        f = daily(dt.date(2024, 1, 1), sym, "um")
        arch.put(f.key, zip_bytes(b"".join(CM_HEADER[:-2] + b"\n" + csv(day_opens(JAN)) for _ in [0])))
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_perp", "1m", [sym], JAN, JAN + DAY_MS)
        assert (rep.rows, rep.failed) == (1440, [])


async def test_a_start_inside_the_current_candle_is_up_to_date_not_an_error(tmp_path: Path) -> None:
    """`lake backfill --interval 1d --start <today 06:00>` (the default `--source auto`): no candle
    of the window has closed, so there is nothing to fetch, as `--source rest` reports. The archive
    part was asked for the window [06:00, 00:00) and failed with "start must be before end"."""
    from lake.ingest.archive.hybrid import archive_backfill
    from lake.sim.server import SimServer
    from lake.store.fs import LakeFS
    from tests.ingest.test_archive_sim import sim_config

    async with SimServer(sim_config()) as sim:  # server "now": 2024-03-10T12:00
        s = Settings(root=str(tmp_path / "lake"), sim_url=sim.base_url)
        start = dt.datetime(2024, 3, 10, 6, tzinfo=dt.UTC)
        for source in ("archive", "auto"):
            res = await archive_backfill(
                LakeFS(s.root), ["usdt_spot"], "1d", settings=s, start=start, source=source, symbols=[SYM]
            )
            assert [a.files_planned for a in res.archive] == [0]
            if source == "auto":
                assert res.rest is not None and res.rest.candles == 0
