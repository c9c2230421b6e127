"""A Quantclass-compatible data API served by the simulator, computed from its own truth.

    SimServer(config, extra_routes=add_quantclass_routes)

    GET /quantclass/api/data/realtime/coin/binance-1h?offset=15m&uuid=…   (header api-key: …)
        {"data": {"spot": <url>, "swap": <url>, "ts": "YYYYmmddHHMM"}}
    GET /quantclass/files/<YYYYmmddHHMM>-<spot|swap>_1h<offset>.7z
        a 7z holding one CSV: the two latest complete 1h candles of that offset per symbol

As the real API (facts: ../shared/reference/quantclass.md): ``ts`` is Asia/Shanghai time and names
the end of the newest complete candle of the offset; ``spot`` holds the usdt_spot symbols and ``swap``
the usdt_perp ones; ``tag`` says whether a spot symbol has a perpetual (``HasSwap``/``NoSwap``) and
whether a perpetual has a spot pair (``HasSpot``/``NoSpot``). The candles are the seed's rule applied
to the simulator's 5m truth (first/max/min/last/sum, only bins whose first and last 5m candles exist),
written by a plain group-by here rather than by ``lake.transform``, so comparing the two is a real check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import threading
from collections import OrderedDict

import polars as pl
from aiohttp import web

from lake.quantclass.client import API_PATH
from lake.quantclass.files import KINDS, SHANGHAI, FileName, encode_archive, write_candles_csv
from lake.sim.clock import VirtualClock
from lake.sim.market import SimMarket

__all__ = ["PREFIX", "add_quantclass_routes", "reference_candles"]

PREFIX = "/quantclass"
OFFSETS = tuple(f"{5 * i}m" for i in range(12))
_HOUR_MS = 3_600_000
_BASE_MS = 300_000
_SUMS = ("volume", "quote_volume", "trade_num", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume")
_TRADE_TYPE = {kind: tt for tt, kind in KINDS.items()}  # spot -> usdt_spot, swap -> usdt_perp


def add_quantclass_routes(app: web.Application, market: SimMarket, clock: VirtualClock) -> None:
    """The ``extra_routes`` hook of ``SimServer``: mount the API under ``/quantclass``."""
    api = _Api(market, clock)
    app.router.add_get(f"{PREFIX}{API_PATH}", api.latest)
    app.router.add_get(PREFIX + "/files/{name}", api.file)


def reference_candles(market: SimMarket, kind: str, offset: str, end_ms: int, hours: int = 2) -> pl.DataFrame:
    """The 1h candles of ``offset`` ending in ``(end_ms − hours·1h, end_ms]`` for every symbol of ``kind``."""
    k_ms = int(offset.rstrip("m")) * 60_000
    tt = _TRADE_TYPE[kind]
    start_ms = end_ms - hours * _HOUR_MS
    base = market.truth(tt, "5m", start=start_ms, end=end_ms, now=end_ms)
    t = pl.col("candle_begin_time").dt.epoch("ms")
    bins = (
        base.sort("symbol", "candle_begin_time")
        .with_columns(((t - k_ms) // _HOUR_MS * _HOUR_MS + k_ms).alias("_bin"), t.alias("_t"))
        .group_by("symbol", "_bin", maintain_order=True)
        .agg(
            pl.col("_t").first().alias("_first"),
            pl.col("_t").last().alias("_last"),
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            *(pl.col(c).sum() for c in _SUMS),
        )
        .filter(
            (pl.col("_first") == pl.col("_bin")) & (pl.col("_last") + _BASE_MS == pl.col("_bin") + _HOUR_MS)
        )
    )
    other = set(market.symbols(_TRADE_TYPE["swap" if kind == "spot" else "spot"]))
    has, has_not = ("HasSwap", "NoSwap") if kind == "spot" else ("HasSpot", "NoSpot")
    return bins.select(
        pl.col("_bin").cast(pl.Datetime("ms", "UTC")).alias("candle_begin_time"),
        "symbol",
        "open",
        "high",
        "low",
        "close",
        *_SUMS,
        pl.when(pl.col("symbol").is_in(sorted(other)))
        .then(pl.lit(has))
        .otherwise(pl.lit(has_not))
        .alias("tag"),
    ).sort("symbol", "candle_begin_time")


class _Api:
    def __init__(self, market: SimMarket, clock: VirtualClock) -> None:
        self.market, self.clock = market, clock
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    async def latest(self, request: web.Request) -> web.Response:
        if "api-key" not in request.headers or "uuid" not in request.query:
            return web.json_response({"code": 401, "msg": "api-key and uuid required"}, status=401)
        offset = request.query.get("offset", "")
        if offset not in OFFSETS:
            return web.json_response({"code": 400, "msg": f"bad offset {offset!r}"}, status=400)
        end = _latest_end(self.clock.now_ms(), offset)
        ts = dt.datetime.fromtimestamp(end / 1000, dt.UTC)
        origin = f"{request.url.origin()}{PREFIX}/files"
        urls = {
            kind: f"{origin}/{FileName(ts, kind, offset)}?_upt={_sign(kind, offset, end)}"
            for kind in ("spot", "swap")
        }
        return web.json_response({"data": {**urls, "ts": f"{ts.astimezone(SHANGHAI):%Y%m%d%H%M}"}})

    async def file(self, request: web.Request) -> web.Response:
        name = FileName.parse(request.match_info["name"])
        if name is None or name.ext != "7z" or name.ts is None or name.offset not in OFFSETS:
            raise web.HTTPNotFound()
        end = int(name.ts.timestamp() * 1000)
        if _latest_end(end, name.offset) != end or end > self.clock.now_ms():
            raise web.HTTPNotFound()
        data = await asyncio.to_thread(self._archive, name, end)
        return web.Response(body=data, content_type="application/x-7z-compressed")

    def _archive(self, name: FileName, end: int) -> bytes:
        key = str(name)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        df = reference_candles(self.market, name.kind, name.offset, end)
        data = encode_archive(write_candles_csv(df), f"{name.kind}_1h{name.offset}.csv")
        with self._lock:
            self._files[key] = data
            while len(self._files) > 96:
                self._files.popitem(last=False)
        return data


def _latest_end(now_ms: int, offset: str) -> int:
    """End of the newest 1h candle of ``offset`` that is complete at ``now_ms``."""
    k_ms = int(offset.rstrip("m")) * 60_000
    return (now_ms - k_ms) // _HOUR_MS * _HOUR_MS + k_ms


def _sign(kind: str, offset: str, end: int) -> str:
    return hashlib.sha256(f"{kind}{offset}{end}".encode()).hexdigest()[:10]
