"""The data.binance.vision archive: files, checksums, format drift, S3 listing, archive faults."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib

import aiohttp
import polars as pl
import pytest
from multidict import CIMultiDict

from lake.sim import SimServer
from lake.sim.clock import MS_PER_DAY, to_ms
from lake.sim.testing import TEST_START, sim_server

NOW = to_ms(TEST_START)
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
UM = "data/futures/um/daily/klines"
SPOT = "data/spot/daily/klines"


def key(pre: str, sym: str, iv: str, period: str) -> str:
    return f"{pre}/{sym}/{iv}/{sym}-{iv}-{period}.zip"


async def fetch(http: aiohttp.ClientSession, sim: SimServer, k: str) -> tuple[int, bytes, CIMultiDict[str]]:
    async with http.get(f"{sim.endpoints.archive}/{k}") as r:
        return r.status, await r.read(), CIMultiDict(r.headers)


def unzip(data: bytes) -> tuple[str, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        (name,) = z.namelist()
        return name, z.read(name).decode()


def csv_frame(text: str) -> pl.DataFrame:
    lines = text.strip("\n").split("\n")
    if lines[0].startswith("open_time"):
        lines = lines[1:]
    rows = [ln.split(",") for ln in lines]
    return pl.DataFrame(
        {
            "t": [int(r[0]) for r in rows],
            "open": [float(r[1]) for r in rows],
            "close": [float(r[4]) for r in rows],
            "volume": [float(r[5]) for r in rows],
            "close_time": [int(r[6]) for r in rows],
            "quote_volume": [float(r[7]) for r in rows],
            "trade_num": [int(r[8]) for r in rows],
        }
    )


async def listing(http: aiohttp.ClientSession, sim: SimServer, **params: str) -> ET.Element:
    async with http.get(sim.endpoints.archive_list, params=params) as r:
        assert r.status == 200 and r.content_type == "application/xml"
        return ET.fromstring(await r.text())


def keys(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{NS}Key")]


def prefixes(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.findall(f"{NS}CommonPrefixes/{NS}Prefix")]


def field(root: ET.Element, name: str) -> str | None:
    e = root.find(f"{NS}{name}")
    return None if e is None else e.text


async def test_zip_checksum_and_content(sim: SimServer, http: aiohttp.ClientSession) -> None:
    k = key(SPOT, "BTCUSDT", "1m", "2025-03-10")
    status, data, headers = await fetch(http, sim, k)
    assert status == 200 and headers["Content-Type"] == "application/zip"
    name, text = unzip(data)
    assert name == "BTCUSDT-1m-2025-03-10.csv"
    status, ck, _ = await fetch(http, sim, k + ".CHECKSUM")
    assert status == 200
    assert ck.decode() == f"{hashlib.sha256(data).hexdigest()}  BTCUSDT-1m-2025-03-10.zip"  # no newline
    df = csv_frame(text)
    assert not text.startswith("open_time") and df.height == 1440
    # Spot files from 2025-01-01 use microseconds.
    assert (
        df["t"][0] == to_ms("2025-03-10") * 1000
        and df["close_time"][0] == (to_ms("2025-03-10") + 60_000) * 1000 - 1
    )
    truth = sim.market.truth("usdt_spot", "1m", ["BTCUSDT"], "2025-03-10", "2025-03-11")
    for c in ("open", "close", "volume", "quote_volume", "trade_num"):
        assert df[c].to_list() == truth[c].to_list(), c


async def test_spot_milliseconds_before_2025_and_headers(http: aiohttp.ClientSession) -> None:
    async with sim_server(futures_header_from={"um": "2025-01-01", "cm": None}) as sim:
        _, data, _ = await fetch(http, sim, key(SPOT, "ETHUSDT", "1h", "2024-12-31"))
        df = csv_frame(unzip(data)[1])
        assert df["t"][0] == to_ms("2024-12-31") and df.height == 24
        _, old, _ = await fetch(http, sim, key(UM, "ETHUSDT", "1h", "2024-12-31"))
        _, new, _ = await fetch(http, sim, key(UM, "ETHUSDT", "1h", "2025-01-01"))
        assert not unzip(old)[1].startswith("open_time")
        head = unzip(new)[1].split("\n")[0]
        assert head == (
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
            "taker_buy_volume,taker_buy_quote_volume,ignore"
        )
        assert csv_frame(unzip(new)[1])["t"][0] == to_ms("2025-01-01")  # futures stay in ms
        _, cm, _ = await fetch(
            http, sim, key("data/futures/cm/daily/klines", "BTCUSD_PERP", "1h", "2025-01-01")
        )
        assert not unzip(cm)[1].startswith("open_time")


async def test_coinm_headers_drift_deterministically(sim: SimServer, http: aiohttp.ClientSession) -> None:
    flags = []
    for d in range(1, 21):
        _, data, _ = await fetch(
            http, sim, key("data/futures/cm/daily/klines", "ETHUSD_PERP", "1d", f"2025-02-{d:02d}")
        )
        flags.append(unzip(data)[1].startswith("open_time"))
    assert 0 < sum(flags) < 20  # some files with a header, some without (default fraction 0.3)
    _, data, _ = await fetch(
        http, sim, key("data/futures/cm/daily/klines", "ETHUSD_PERP", "1d", "2025-02-01")
    )
    assert unzip(data)[1].startswith("open_time") == flags[0]


async def test_which_files_exist(sim: SimServer, http: aiohttp.ClientSession) -> None:
    monthly = "data/futures/um/monthly/klines"
    ok = [
        key(monthly, "BTCUSDT", "1mo", "2025-01"),
        key(monthly, "BTCUSDT", "1w", "2025-01"),
        key(monthly, "BTCUSDT", "3d", "2025-01"),
        key(UM, "BTCUSDT", "1d", "2025-03-14"),  # yesterday: published 06:00 today
    ]
    missing = [
        key(UM, "BTCUSDT", "3d", "2025-03-10"),  # daily stops at 1d
        key(UM, "BTCUSDT", "1M", "2025-01-01"),
        key(monthly, "BTCUSDT", "1m", "2025-03"),  # month not over
        key(UM, "BTCUSDT", "1m", "2025-03-15"),  # today
        key(UM, "BTCUSDT", "1m", "2024-01-01"),  # before the history
        key(UM, sim.market.awkward.delisted["um"][0], "1m", "2025-03-10"),  # after delisting
        "data/futures/um/daily/klines/BTCUSDT/1m/ETHUSDT-1m-2025-03-10.zip",
    ]
    for k in ok:
        assert (await fetch(http, sim, k))[0] == 200, k
    for k in missing:
        status, body, _ = await fetch(http, sim, k)
        assert status == 404 and b"NoSuchKey" in body, k
    _, data, _ = await fetch(http, sim, key(monthly, "BTCUSDT", "1mo", "2025-01"))
    name, text = unzip(data)
    assert name == "BTCUSDT-1mo-2025-01.csv" and len(text.strip().split("\n")) == 2  # header + 1 row
    sim.clock.set(to_ms("2025-03-15T05:59:00"))
    assert (await fetch(http, sim, key(UM, "BTCUSDT", "1d", "2025-03-14")))[0] == 404  # lag not over
    # A maintenance day still has its file, with the window's minutes missing.
    a, b = sim.market.awkward.maintenance["um"][-1]
    day = a - a % MS_PER_DAY
    _, data, _ = await fetch(http, sim, key(UM, "BTCUSDT", "1m", _date(day)))
    assert csv_frame(unzip(data)[1]).height == 1440 - (b - a) // 60_000


def _date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


async def test_head_etag_last_modified(sim: SimServer, http: aiohttp.ClientSession) -> None:
    k = key(UM, "ETHUSDT", "5m", "2025-03-01")
    _, data, headers = await fetch(http, sim, k)
    async with http.head(f"{sim.endpoints.archive}/{k}") as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
        assert r.headers["ETag"] == headers["ETag"] and re.fullmatch(r'"[0-9a-f]{32}"', headers["ETag"])
        assert r.headers["Last-Modified"] == headers["Last-Modified"] == "Sun, 02 Mar 2025 06:00:00 GMT"


async def test_listing_levels(sim: SimServer, http: aiohttp.ClientSession) -> None:
    root = await listing(http, sim, prefix="", delimiter="/")
    assert prefixes(root) == ["data/"]
    root = await listing(http, sim, prefix="data/", delimiter="/")
    assert prefixes(root) == ["data/futures/", "data/spot/"]
    root = await listing(http, sim, prefix="data/futures/cm/", delimiter="/")
    assert prefixes(root) == ["data/futures/cm/daily/", "data/futures/cm/monthly/"]
    root = await listing(http, sim, prefix=f"{UM}/", delimiter="/")
    syms = [p.split("/")[-2] for p in prefixes(root)]
    assert "BTCUSDT" in syms and syms == sorted(syms) and field(root, "IsTruncated") == "false"
    assert sim.market.awkward.delivered["um"][0] in syms  # its files stay
    root = await listing(http, sim, prefix=f"{UM}/BTCUSDT/", delimiter="/")
    assert [p.split("/")[-2] for p in prefixes(root)] == sorted(
        ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"])  # fmt: skip
    root = await listing(http, sim, prefix="data/spot/monthly/klines/BTCUSDT/", delimiter="/")
    assert {"1mo/", "1w/", "3d/"} <= {p.split("/", 5)[-1] for p in prefixes(root)}
    root = await listing(http, sim, prefix=f"{UM}/BTCUSDT/1d/", delimiter="/")
    ks = keys(root)
    assert ks[0].endswith("BTCUSDT-1d-2024-10-16.zip") and ks[1] == ks[0] + ".CHECKSUM"
    assert ks[-1].endswith("BTCUSDT-1d-2025-03-14.zip.CHECKSUM") and len(ks) == 2 * 150
    contents = root.find(f"{NS}Contents")
    assert contents is not None
    assert {c.tag.removeprefix(NS) for c in contents} == {
        "Key",
        "LastModified",
        "ETag",
        "Size",
        "StorageClass",
    }
    assert field(root, "Name") == "data.binance.vision" and field(root, "MaxKeys") == "1000"
    # A partial prefix filters names.
    root = await listing(http, sim, prefix=f"{UM}/BTCUSDT/1d/BTCUSDT-1d-2025-02", delimiter="/")
    assert len(keys(root)) == 2 * 28


@pytest.mark.parametrize("next_marker", [True, False])
async def test_listing_pagination(http: aiohttp.ClientSession, next_marker: bool) -> None:
    async with sim_server(history_days=560, list_next_marker=next_marker) as sim:
        prefix = f"{UM}/ETHUSDT/1m/"
        seen: list[str] = []
        marker = ""
        pages = 0
        while True:
            root = await listing(http, sim, prefix=prefix, delimiter="/", marker=marker)
            page = keys(root)
            seen += page
            pages += 1
            if field(root, "IsTruncated") != "true":
                assert field(root, "NextMarker") is None
                break
            assert len(page) == 1000
            nm = field(root, "NextMarker")
            assert (nm == page[-1]) if next_marker else nm is None
            marker = nm or page[-1]
        assert pages == 2 and len(seen) == 2 * 560 and seen == sorted(seen) and len(set(seen)) == len(seen)
        # A page with a single entry.
        root = await listing(http, sim, prefix=prefix, delimiter="/", marker=seen[10], **{"max-keys": "1"})
        assert keys(root) == [seen[11]] and field(root, "IsTruncated") == "true"


async def test_listing_without_delimiter_is_recursive(sim: SimServer, http: aiohttp.ClientSession) -> None:
    root = await listing(http, sim, prefix="data/futures/cm/monthly/klines/BTCUSD_PERP/")
    ks = keys(root)
    assert not prefixes(root) and ks == sorted(ks)
    assert {k.split("/")[-2] for k in ks} == {"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h",
                                              "12h", "1d", "3d", "1w", "1mo"}  # fmt: skip
    root = await listing(http, sim, prefix="data/futures/cm/monthly/klines/BTCUSD_PERP/", marker=ks[-3])
    assert keys(root) == ks[-2:]


async def test_archive_faults(sim: SimServer, http: aiohttp.ClientSession) -> None:
    good_k = key(UM, "BTCUSDT", "1h", "2025-03-01")
    _, good, _ = await fetch(http, sim, good_k)
    sha = hashlib.sha256(good).hexdigest()
    sim.control_faults({
        "corrupt_zips": [good_k],
        "wrong_checksums": {"BTCUSDT-1h-2025-03-02.zip": None, "BTCUSDT-1h-2025-03-03.zip": 2},
        "missing_days": ["um/BTCUSDT/2025-03-04"],
    })  # fmt: skip
    _, bad, _ = await fetch(http, sim, good_k)
    assert len(bad) == len(good) and bad != good
    assert (await fetch(http, sim, good_k + ".CHECKSUM"))[1].decode().split()[0] == sha
    with pytest.raises((zipfile.BadZipFile, zlib.error)), zipfile.ZipFile(io.BytesIO(bad)) as z:
        z.read(z.namelist()[0])
    for _ in range(3):  # persistent
        k = key(UM, "BTCUSDT", "1h", "2025-03-02")
        _, z, _ = await fetch(http, sim, k)
        assert (await fetch(http, sim, k + ".CHECKSUM"))[1].split()[0].decode() != hashlib.sha256(
            z
        ).hexdigest()
    k = key(UM, "BTCUSDT", "1h", "2025-03-03")  # heals after 2 downloads
    results = []
    for _ in range(3):
        _, z, _ = await fetch(http, sim, k)
        results.append(
            (await fetch(http, sim, k + ".CHECKSUM"))[1].split()[0].decode() == hashlib.sha256(z).hexdigest()
        )
    assert results == [False, True, True]
    # A missing day: no file, not listed, but REST has the data.
    assert (await fetch(http, sim, key(UM, "BTCUSDT", "1h", "2025-03-04")))[0] == 404
    root = await listing(http, sim, prefix=f"{UM}/BTCUSDT/1h/BTCUSDT-1h-2025-03-0", delimiter="/")
    assert not any("2025-03-04" in k for k in keys(root)) and any("2025-03-05" in k for k in keys(root))
    q = {"symbol": "BTCUSDT", "interval": "1h", "startTime": str(to_ms("2025-03-04")), "limit": "24"}
    async with http.get(f"{sim.base_url}/fapi/v1/klines", params=q) as r:
        assert len(await r.json()) == 24
    assert sim.faults.to_json()["wrong_checksums"] == {
        "BTCUSDT-1h-2025-03-02.zip": None,
        "BTCUSDT-1h-2025-03-03.zip": 0,
    }


async def test_reupload_changes_file_and_truth(sim: SimServer, http: aiohttp.ClientSession) -> None:
    k = key(SPOT, "ETHUSDT", "1m", "2025-03-05")
    _, before, h1 = await fetch(http, sim, k)
    truth_before = sim.market.truth("usdt_spot", "1m", ["ETHUSDT"], "2025-03-05", "2025-03-06")
    month_k = key("data/spot/monthly/klines", "ETHUSDT", "1d", "2025-02")
    _, _, hm1 = await fetch(http, sim, month_k)
    sim.clock.advance(3_600_000)
    (applied,) = sim.control_faults(
        {"reupload": [{"market": "spot", "symbol": "ETHUSDT", "date": "2025-03-05"}]}
    )
    _, after, h2 = await fetch(http, sim, k)
    assert (
        after != before
        and h2["ETag"] != h1["ETag"]
        and h2["Last-Modified"] == "Sat, 15 Mar 2025 13:00:00 GMT"
    )
    truth_after = sim.market.truth("usdt_spot", "1m", ["ETHUSDT"], "2025-03-05", "2025-03-06")
    diff = truth_after.filter(truth_after["volume"] != truth_before["volume"])
    assert diff.height == 1 and diff["candle_begin_time"][0].timestamp() * 1000 == applied["corrected_open"]
    assert csv_frame(unzip(after)[1])["volume"].to_list() == truth_after["volume"].to_list()
    _, _, hm2 = await fetch(http, sim, month_k)
    assert hm2["ETag"] == hm1["ETag"]  # other periods keep theirs


async def test_archive_bytes_are_deterministic(sim: SimServer, http: aiohttp.ClientSession) -> None:
    k = key("data/futures/cm/monthly/klines", "ETHUSD_PERP", "15m", "2025-02")
    _, a, _ = await fetch(http, sim, k)
    async with sim_server() as other:
        _, b, _ = await fetch(http, other, k)
        _, ck, _ = await fetch(http, other, k + ".CHECKSUM")
    assert a == b and ck.decode().split()[0] == hashlib.sha256(a).hexdigest()
