"""Venue knowledge, declared once: markets, trade types and endpoints.

A *market* is one Binance REST/WS venue with its own weight budget (spot, USDⓈ-M futures ``um``,
COIN-M futures ``cm``). A *trade type* is a slice of a market selected by quote asset and contract
type (the seeds' ``usdt_spot``, ``usdt_perp``, …). Trade types on the same market share its budget.

Facts come from ../shared/reference/binance.md; numbers the docs disagree on (COIN-M's weight limit)
are defaults only: clients read ``rateLimits`` from exchangeInfo at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from lake.errors import ValidationError

__all__ = [
    "DELIVERY_CONTRACT_TYPES",
    "MARKETS",
    "TRADE_TYPES",
    "Endpoints",
    "Market",
    "TradeType",
    "futures_kline_weight",
    "get_market",
    "get_trade_type",
]


def futures_kline_weight(limit: int) -> int:
    """Weight of one futures klines request by ``limit``: [1,100)→1, [100,500)→2, [500,1000]→5, >1000→10."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def spot_kline_weight(limit: int) -> int:
    """Spot klines cost a flat 2 whatever the limit (since 2023-08-25)."""
    return 2


@dataclass(frozen=True, slots=True)
class Market:
    """One Binance market (REST + WS venue) and its limits."""

    name: str  # "spot" | "um" | "cm"
    label: str
    rest_base: str
    api_prefix: str
    ws_base: str
    archive_prefix: str  # path under the archive root, e.g. "data/futures/um"
    kline_max_limit: int
    kline_request_limit: int  # the limit giving the most rows per unit of weight
    default_weight_limit: int
    exchange_info_weight: int
    ws_stream_cap: int
    ws_msgs_per_sec: int
    ws_update_ms: int
    status_field: str
    funding_path: str | None
    # COIN-M caps startTime..endTime at 200 days and answers the newest rows before endTime.
    kline_max_span_days: int | None = None

    def kline_weight(self, limit: int) -> int:
        if self.name == "spot":
            return spot_kline_weight(limit)
        return futures_kline_weight(limit)

    @property
    def klines_path(self) -> str:
        return f"{self.api_prefix}/klines"

    @property
    def exchange_info_path(self) -> str:
        return f"{self.api_prefix}/exchangeInfo"

    @property
    def time_path(self) -> str:
        return f"{self.api_prefix}/time"


MARKETS: Mapping[str, Market] = MappingProxyType(
    {
        "spot": Market(
            name="spot",
            label="spot",
            rest_base="https://api.binance.com",
            api_prefix="/api/v3",
            ws_base="wss://stream.binance.com:9443",
            archive_prefix="data/spot",
            kline_max_limit=1000,
            kline_request_limit=1000,
            default_weight_limit=6000,
            exchange_info_weight=20,
            ws_stream_cap=1024,
            ws_msgs_per_sec=5,
            ws_update_ms=2000,
            status_field="status",
            funding_path=None,
        ),
        "um": Market(
            name="um",
            label="USDⓈ-M futures",
            rest_base="https://fapi.binance.com",
            api_prefix="/fapi/v1",
            # Klines moved to the /market route; the unrouted URL only carries /public streams.
            ws_base="wss://fstream.binance.com/market",
            archive_prefix="data/futures/um",
            kline_max_limit=1500,
            kline_request_limit=499,
            default_weight_limit=2400,
            exchange_info_weight=1,
            ws_stream_cap=1024,
            ws_msgs_per_sec=10,
            ws_update_ms=250,
            status_field="status",
            funding_path="/fapi/v1/fundingRate",
        ),
        "cm": Market(
            name="cm",
            label="COIN-M futures",
            rest_base="https://dapi.binance.com",
            api_prefix="/dapi/v1",
            ws_base="wss://dstream.binance.com",
            archive_prefix="data/futures/cm",
            kline_max_limit=1500,
            kline_request_limit=499,
            default_weight_limit=2400,
            exchange_info_weight=1,
            ws_stream_cap=200,
            ws_msgs_per_sec=10,
            ws_update_ms=250,
            status_field="contractStatus",
            funding_path="/dapi/v1/fundingRate",
            kline_max_span_days=200,
        ),
    }
)

DELIVERY_CONTRACT_TYPES = frozenset(
    {
        "CURRENT_MONTH",
        "NEXT_MONTH",
        "CURRENT_QUARTER",
        "NEXT_QUARTER",
        "CURRENT_QUARTER_DELIVERING",
        "NEXT_QUARTER_DELIVERING",
    }
)


@dataclass(frozen=True, slots=True)
class TradeType:
    """A slice of a market: which exchangeInfo symbols belong to it."""

    name: str
    market_name: str
    quote_asset: str | None  # None: any quote asset (COIN-M contracts quote in USD)
    contract_types: frozenset[str] | None  # None: spot (no contract type)
    description: str

    @property
    def market(self) -> Market:
        return MARKETS[self.market_name]

    @property
    def is_spot(self) -> bool:
        return self.market_name == "spot"

    @property
    def is_perpetual(self) -> bool:
        return self.contract_types == _PERP

    def accepts(self, info: Mapping[str, object], *, trading_only: bool = True) -> bool:
        """Whether one raw exchangeInfo symbol entry belongs to this trade type.

        ``info`` is the entry as Binance sends it; the status key differs per market
        (``status`` vs COIN-M's ``contractStatus``).
        """
        if trading_only and info.get(self.market.status_field) != "TRADING":
            return False
        if self.quote_asset is not None and info.get("quoteAsset") != self.quote_asset:
            return False
        if self.contract_types is not None:
            ct = info.get("contractType")  # (a list from a hostile answer is unhashable)
            return isinstance(ct, str) and ct in self.contract_types
        return True


# A perpetual being delisted is PERPETUAL_DELIVERING until it settles (binance.md §3): still the
# same symbol of the same trade type, with klines and funding to fetch up to its end.
_PERP = frozenset({"PERPETUAL", "PERPETUAL_DELIVERING"})

TRADE_TYPES: Mapping[str, TradeType] = MappingProxyType(
    {
        t.name: t
        for t in (
            TradeType("usdt_spot", "spot", "USDT", None, "spot pairs quoted in USDT"),
            TradeType("btc_spot", "spot", "BTC", None, "spot pairs quoted in BTC"),
            TradeType("usdc_spot", "spot", "USDC", None, "spot pairs quoted in USDC"),
            TradeType("usdt_perp", "um", "USDT", _PERP, "USDⓈ-M perpetuals margined in USDT"),
            TradeType("usdc_perp", "um", "USDC", _PERP, "USDⓈ-M perpetuals margined in USDC"),
            TradeType("usdt_deli", "um", "USDT", DELIVERY_CONTRACT_TYPES, "USDⓈ-M delivery contracts"),
            TradeType("coin_perp", "cm", None, _PERP, "COIN-M perpetuals (BTCUSD_PERP)"),
            TradeType("coin_deli", "cm", None, DELIVERY_CONTRACT_TYPES, "COIN-M delivery contracts"),
        )
    }
)


def get_trade_type(name: str | TradeType) -> TradeType:
    """Look up a trade type by name, with a clear error listing the valid ones."""
    if isinstance(name, TradeType):
        return name
    tt = TRADE_TYPES.get(name)
    if tt is None:
        raise ValidationError(f"unknown trade type {name!r}; valid: {', '.join(TRADE_TYPES)}")
    return tt


def get_market(name: str) -> Market:
    m = MARKETS.get(name)
    if m is None:
        raise ValidationError(f"unknown market {name!r}; valid: {', '.join(MARKETS)}")
    return m


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v or None


@dataclass(frozen=True)
class Endpoints:
    """Every URL the client talks to. Binance's are the default; each one can be overridden.

    * ``rest[market]``: REST base; the market's ``api_prefix`` is appended (``/fapi/v1/klines``).
    * ``ws[market]``: websocket base; ``/stream?streams=…`` or ``/ws/<stream>`` is appended.
    * ``archive``: where archive files are fetched (``{archive}/data/spot/daily/klines/…``).
    * ``archive_list``: the S3 bucket URL answering ``?prefix=…&delimiter=/&marker=…`` listings.
    * ``quantclass``: Quantclass data API base (``{quantclass}/api/data/realtime/coin/binance-1h``).
    """

    rest: Mapping[str, str] = field(default_factory=lambda: {m.name: m.rest_base for m in MARKETS.values()})
    ws: Mapping[str, str] = field(default_factory=lambda: {m.name: m.ws_base for m in MARKETS.values()})
    archive: str = "https://data.binance.vision"
    archive_list: str = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
    quantclass: str = "https://api.quantclass.cn"

    @classmethod
    def simulator(cls, base: str) -> Endpoints:
        """The URLs of a ``lake sim`` server at ``base`` (e.g. ``http://127.0.0.1:8765``)."""
        base = base.rstrip("/")
        ws_root = "ws" + base[len("http") :] if base.startswith("http") else base
        return cls(
            rest={m: base for m in MARKETS},
            ws={"spot": f"{ws_root}/ws-spot", "um": f"{ws_root}/ws-um/market", "cm": f"{ws_root}/ws-cm"},
            archive=f"{base}/archive",
            archive_list=f"{base}/archive-bucket",
            quantclass=f"{base}/quantclass",
        )

    def with_rest(self, url: str, markets: list[str] | None = None) -> Endpoints:
        """Override the REST base of ``markets`` (all by default)."""
        rest = dict(self.rest)
        for m in markets or list(MARKETS):
            rest[m] = url.rstrip("/")
        return replace(self, rest=rest)

    def with_ws(self, url: str, markets: list[str] | None = None) -> Endpoints:
        ws = dict(self.ws)
        for m in markets or list(MARKETS):
            ws[m] = url.rstrip("/")
        return replace(self, ws=ws)

    def rest_url(self, market: Market | str, path: str) -> str:
        name = market if isinstance(market, str) else market.name
        return f"{self.rest[name]}{path}"
