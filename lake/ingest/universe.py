"""The symbol universe of a trade type, from exchangeInfo; every fetch is snapshotted into the lake.

    async with RestClient.from_settings(settings, "um") as client:
        snap = await fetch_exchange_info(client)                 # one exchangeInfo request
        uni = universe(snap, "usdt_perp")                          # TRADING USDT perpetuals, sorted
        uni = universe(snap, "usdt_perp", ["BTCUSDT", "ETHUSDT"])  # whitelist (any status)
        write_snapshot(root, snap, ["usdt_perp"])                  # exchange_info table

The seed's rule made general (``TradeType.accepts``): quote asset, status ``TRADING`` (COIN-M's key
is ``contractStatus``) and contract type (PERPETUAL for ``*_perp``, delivery types for ``*_deli``).
A whitelist may name symbols of the trade type in any status (e.g. one being delisted), but a
symbol the trade type does not list at all is an error naming it (``NotFoundError``).

The ``exchange_info`` table layout is documented in ``lake.store.tables``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lake.binance.markets import MARKETS, Market, TradeType, get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import NotFoundError, ValidationError
from lake.ingest.rest_client import RestClient, parse_rate_limit
from lake.store.fs import LakeFS
from lake.store.tables import EXCHANGE_INFO_SCHEMA, write_exchange_info

__all__ = [
    "ExchangeSnapshot",
    "SymbolInfo",
    "Universe",
    "fetch_exchange_info",
    "parse_symbol",
    "snapshot_frame",
    "universe",
    "write_snapshot",
]

log = logging.getLogger("lake.ingest.universe")

# Binance uses 4133404800000 (2100-12-25) as "no delivery" for perpetuals.
_NO_DELIVERY_MS = 4_000_000_000_000


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """The fields of one exchangeInfo symbol the lake keeps (numbers parsed from Binance's strings)."""

    symbol: str
    status: str | None
    base_asset: str | None
    quote_asset: str | None
    margin_asset: str | None = None
    contract_type: str | None = None
    pair: str | None = None
    onboard_ms: int | None = None
    delivery_ms: int | None = None  # None for perpetuals (Binance's 2100-12-25 placeholder)
    tick_size: float | None = None
    lot_size: float | None = None  # LOT_SIZE stepSize
    min_notional: float | None = None
    contract_size: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


# exchangeInfo comes from the network: a value of the wrong type, 1e400 (inf), NaN or a date no
# datetime holds is None, never an exception that stops a whole-market run over one entry.
_MAX_MS = 253_402_300_800_000  # 10000-01-01: the first ms a datetime cannot hold


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _ms(v: Any) -> int | None:
    x = _int(v)
    return x if x is not None and 0 <= x < _MAX_MS else None


def parse_symbol(info: Mapping[str, Any], market: Market | str) -> SymbolInfo:
    """Parse one raw exchangeInfo symbol entry of ``market``."""
    m = market if isinstance(market, Market) else MARKETS[market]
    raw_filters = info.get("filters")
    filters = {
        f.get("filterType"): f
        for f in (raw_filters if isinstance(raw_filters, list) else [])
        if isinstance(f, Mapping) and isinstance(f.get("filterType"), str)
    }
    price = filters.get("PRICE_FILTER", {})
    lot = filters.get("LOT_SIZE", {})
    notional: float | None = None
    if "MIN_NOTIONAL" in filters:  # spot: minNotional; futures: notional
        f = filters["MIN_NOTIONAL"]
        notional = _num(f.get("minNotional", f.get("notional")))
    if notional is None and "NOTIONAL" in filters:
        notional = _num(filters["NOTIONAL"].get("minNotional"))
    delivery = _ms(info.get("deliveryDate"))
    return SymbolInfo(
        symbol=str(info.get("symbol")),
        status=_str(info.get(m.status_field)),
        base_asset=_str(info.get("baseAsset")),
        quote_asset=_str(info.get("quoteAsset")),
        margin_asset=_str(info.get("marginAsset")),
        contract_type=_str(info.get("contractType")) or None,
        pair=_str(info.get("pair")),
        onboard_ms=_ms(info.get("onboardDate")),
        delivery_ms=delivery if delivery is not None and delivery < _NO_DELIVERY_MS else None,
        tick_size=_num(price.get("tickSize")),
        lot_size=_num(lot.get("stepSize")),
        min_notional=notional,
        contract_size=_num(info.get("contractSize")),
        raw=info,
    )


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


@dataclass(frozen=True)
class ExchangeSnapshot:
    """One exchangeInfo answer of one market, taken at ``server_time_ms``."""

    market: str
    server_time_ms: int
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def symbols(self) -> list[Mapping[str, Any]]:
        symbols = self.raw.get("symbols")
        return [s for s in symbols if isinstance(s, Mapping)] if isinstance(symbols, list) else []

    @property
    def rate_limit(self) -> tuple[int, int, str] | None:
        """``(limit, window_ms, header)`` of REQUEST_WEIGHT (see ``parse_rate_limit``)."""
        return parse_rate_limit(self.raw)

    def members(self, trade_type: str | TradeType, *, trading_only: bool = True) -> list[SymbolInfo]:
        """Symbols of ``trade_type`` (only TRADING ones unless ``trading_only=False``), sorted."""
        tt = get_trade_type(trade_type)
        if tt.market_name != self.market:
            raise ValidationError(
                f"trade type {tt.name} belongs to market {tt.market_name}, not {self.market}"
            )
        out = [
            parse_symbol(s, tt.market)
            for s in self.symbols
            if tt.accepts(s, trading_only=trading_only) and _usable_name(self.market, s.get("symbol"))
        ]
        return sorted(out, key=lambda s: s.symbol)

    def listed(self, trade_type: str | TradeType, symbols: Iterable[str]) -> list[str]:
        """The ``symbols`` that ``trade_type`` lists (in any status), in their order: a whitelist
        shared by several trade types is split with it."""
        names = {s.symbol for s in self.members(trade_type, trading_only=False)}
        return [s for s in symbols if s in names]


_skipped_names: set[tuple[str, str]] = set()


def _usable_name(market: str, name: object) -> bool:
    """Whether an exchangeInfo symbol name can become a path and a URL; a name that cannot is
    skipped with one warning per process (not every refresh), so one exotic listing never stops a
    whole-market run."""
    if not isinstance(name, str):
        return False
    try:
        validate_symbol(name)
    except ValidationError:
        if (market, name) not in _skipped_names:
            _skipped_names.add((market, name))
            log.warning("%s exchangeInfo: skipping symbol %r (a name lake cannot store safely)", market, name)
        return False
    return True


async def fetch_exchange_info(client: RestClient) -> ExchangeSnapshot:
    """Fetch exchangeInfo (the client's governor adopts its weight limit)."""
    raw = await client.exchange_info()
    server_time = _ms(raw.get("serverTime")) or client.server_now_ms()
    return ExchangeSnapshot(client.market.name, server_time, raw)


@dataclass(frozen=True)
class Universe:
    """The symbols one run works on for one trade type, with their exchangeInfo fields."""

    trade_type: str
    symbols: list[str]
    info: Mapping[str, SymbolInfo]
    snapshot_time_ms: int

    def __len__(self) -> int:
        return len(self.symbols)


def universe(
    snapshot: ExchangeSnapshot,
    trade_type: str | TradeType,
    symbols: Iterable[str] | None = None,
) -> Universe:
    """The trade type's TRADING symbols, or the whitelist ``symbols`` checked against exchangeInfo.

    Raises ``NotFoundError`` naming every whitelisted symbol the trade type does not list.
    """
    tt = get_trade_type(trade_type)
    if symbols is None:
        members = snapshot.members(tt)
        return Universe(
            tt.name, [s.symbol for s in members], {s.symbol: s for s in members}, snapshot.server_time_ms
        )
    wanted = [validate_symbol(s) for s in dict.fromkeys(symbols)]
    everything = {s.symbol: s for s in snapshot.members(tt, trading_only=False)}
    unknown = [s for s in wanted if s not in everything]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise NotFoundError(f"unknown {tt.name} symbol{plural}: {', '.join(unknown)}")
    inactive = [s for s in wanted if everything[s].status != "TRADING"]
    if inactive:
        # allowed on purpose (delisted / settling symbols still have history), but said
        log.info("%s: whitelisted symbols not TRADING: %s", tt.name, ", ".join(inactive))
    return Universe(tt.name, wanted, {s: everything[s] for s in wanted}, snapshot.server_time_ms)


def snapshot_frame(snapshot: ExchangeSnapshot, trade_type: str | TradeType) -> pl.DataFrame:
    """The exchange_info rows of one trade type (every status) for this snapshot."""
    members = snapshot.members(trade_type, trading_only=False)
    ts = dt.datetime.fromtimestamp(snapshot.server_time_ms / 1000, tz=dt.UTC)

    def when(ms: int | None) -> dt.datetime | None:
        return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)

    return pl.DataFrame(
        {
            "snapshot_time": [ts] * len(members),
            "symbol": [s.symbol for s in members],
            "status": [s.status for s in members],
            "base_asset": [s.base_asset for s in members],
            "quote_asset": [s.quote_asset for s in members],
            "margin_asset": [s.margin_asset for s in members],
            "contract_type": [s.contract_type for s in members],
            "pair": [s.pair for s in members],
            "onboard_date": [when(s.onboard_ms) for s in members],
            "delivery_date": [when(s.delivery_ms) for s in members],
            "tick_size": [s.tick_size for s in members],
            "lot_size": [s.lot_size for s in members],
            "min_notional": [s.min_notional for s in members],
            "contract_size": [s.contract_size for s in members],
        },
        schema=EXCHANGE_INFO_SCHEMA,
    )


def write_snapshot(
    root: str | os.PathLike[str] | LakeFS,
    snapshot: ExchangeSnapshot,
    trade_types: Sequence[str | TradeType],
) -> list[str]:
    """Store the snapshot in the ``exchange_info`` table for each trade type; returns those written
    (an unchanged snapshot of the same day is not written again)."""
    written: list[str] = []
    for t in trade_types:
        tt = get_trade_type(t)
        if write_exchange_info(root, tt.name, snapshot_frame(snapshot, tt)):
            written.append(tt.name)
    return written
