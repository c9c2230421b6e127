"""Every simulator knob in one frozen dataclass (``SimConfig``) plus the initial faults (``FaultConfig``).

Defaults follow ../shared/reference/binance.md. Behaviour the reference marks UNVERIFIED is a knob
here, with the most widely assumed behaviour as the default:

* ``cm_recent_rows``: COIN-M answers the most recent ``limit`` rows before endTime (documented);
  spot/USDⓈ-M answer ascending from startTime (documented for spot, assumed for USDⓈ-M:
  ``um_recent_rows`` flips it). ``start_in_candle``: whether a startTime inside a candle includes it.
* ``weight_window``: fixed virtual UTC minute (assumed) or sliding 60 s; ``futures_retry_after``.
* ``ws_close_quiet``: whether a candle without trades gets its ``x: true`` event.
* ``advertised_weight_limits``: an exchangeInfo ``rateLimits`` value that is not the enforced limit.
* ``count_rejected_weight``: whether a request refused with 429 still adds its weight (default no).
* ``ban_after``: how many requests sent after a 429 in the same window earn a 418 (unpublished).
* ``list_next_marker``: whether the S3 listing sends ``NextMarker`` when truncated.
* ``futures_header_from`` / ``futures_header_fraction``: which futures archive CSVs carry a header.
* ``funding_4h_fraction`` / ``funding_jitter_ms``: USDⓈ-M perpetuals moving to 4h funding, fundingTime
  a few ms after the hour (the reference is silent on both; Binance's data shows them).
* ``inactive_status`` / ``delivered_status``: exchangeInfo status of delisted / delivered symbols.
* ``ws_close_lag_ms``: how far after the candle's close time (virtual) the ``x: true`` event goes out.
* ``zombie_minutes``: how long a delisted futures perpetual keeps producing "zombie" candles (no
  trades, all four prices at its last close), as FTTBUSD's did (binance.md §6.3); how long Binance's
  go on is not on record, so the default is none.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from lake.binance.markets import MARKETS
from lake.errors import ConfigError
from lake.sim.clock import to_ms

__all__ = ["FaultConfig", "SimConfig"]

T = TypeVar("T")


def _frozen(d: Mapping[str, T]) -> Mapping[str, T]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class FaultConfig:
    """Faults active from start-up. All can be changed mid-run (``SimServer.faults`` / ``POST /_sim/faults``).

    Archive file references are either a full key (``data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip``)
    or a bare zip name (any market). Missing days are ``"SYMBOL/YYYY-MM-DD"`` or ``"market/SYMBOL/YYYY-MM-DD"``.
    """

    ws_drop_every_s: float | None = None  # real seconds a websocket connection lives before being dropped
    ws_close_delay_s: float = 0.0  # virtual seconds the x:true event is held back
    ws_skip_close_symbols: tuple[str, ...] = ()  # symbols whose x:true events are never sent
    rest_error_rate: float = 0.0  # fraction of REST calls answered with rest_error_status
    rest_error_status: int = 503
    rest_hang_rate: float = 0.0  # fraction of REST calls that hang rest_hang_s real seconds, then 504
    rest_hang_s: float = 30.0
    force_429: int = 0  # the next N REST calls (any market) get 429
    corrupt_zips: tuple[str, ...] = ()
    unserved_zips: tuple[str, ...] = ()  # listed, but every GET of the zip answers unserved_status
    unserved_status: int = 503  # 403: CloudFront's WAF block
    wrong_checksums: Mapping[str, int | None] = field(default_factory=dict)  # file -> heal after N zip GETs
    missing_days: tuple[str, ...] = ()
    seed: int = 0  # seeds the fault RNG (which calls fail), independent of the market seed


@dataclass(frozen=True)
class SimConfig:
    """All simulator settings. ``start=None`` means the real time when the market is built."""

    seed: int = 1
    n_symbols: int = 10  # per market, including delisted / delivered ones
    n_symbols_by_market: Mapping[str, int] = field(default_factory=dict)
    speed: float = 1.0  # virtual seconds per real second; 0 freezes the clock
    start: int | str | dt.datetime | None = None
    history_days: int = 730  # data begins this many days before the start day
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port

    # The awkward truths (recent listings, delistings, a relisting, maintenance, illiquid symbols).
    awkward: bool = True
    # Also list 币安人生USDT on USDⓈ-M, as Binance has since October 2025: a symbol name that is not ASCII.
    cjk_symbol: bool = False
    recent_listing_days: int = 20
    zero_volume_rate: float = 0.0005  # chance that a minute of an ordinary symbol has no trades
    illiquid_zero_volume_rate: float = 0.08
    # Explicit maintenance windows (market, start, end); None: two per market at fixed offsets from start.
    maintenance: tuple[tuple[str, int | str, int | str], ...] | None = None

    # REST
    weight_limits: Mapping[str, int] = field(
        default_factory=lambda: _frozen({m.name: m.default_weight_limit for m in MARKETS.values()})
    )
    # exchangeInfo's REQUEST_WEIGHT limit where it differs from the enforced one (COIN-M's docs say
    # 6000 in English, 2400 in Chinese: a client trusting the wrong one learns from the 429 message)
    advertised_weight_limits: Mapping[str, int] = field(default_factory=dict)
    count_rejected_weight: bool = False
    ban_after: int = 5
    ban_base_s: float = 120.0  # virtual seconds; doubles per repeat offence
    ban_max_s: float = 3 * 86_400.0
    funding_limit_5m: int = 500  # USDⓈ-M fundingRate: 500 requests / 5 min, outside REQUEST_WEIGHT
    cm_max_span_days: int = 200
    cm_recent_rows: bool = True  # COIN-M: most recent `limit` rows before endTime (documented)
    um_recent_rows: bool = False  # USDⓈ-M with both times: newest rows instead of ascending (UNVERIFIED)
    start_in_candle: bool = False  # a startTime inside a candle includes that candle (UNVERIFIED)
    weight_window: str = "fixed"  # "fixed": the virtual UTC minute; "sliding": the last 60 s (UNVERIFIED)
    futures_retry_after: bool = True  # send Retry-After on futures 429/418 too (UNVERIFIED)
    # Markets whose /fundingRate answers the NEWEST `limit` rows of [startTime, endTime] (Binance does
    # not document the order for COIN-M); by default the oldest, as USDⓈ-M does.
    funding_newest_first: tuple[str, ...] = ()
    # USDⓈ-M funding is not one 8h grid: many perpetuals moved to 4h funding (the archive's fundingRate
    # CSV has a funding_interval_hours column), and fundingTime is at times a few ms after the hour.
    # This fraction of USDⓈ-M perpetuals switches from 8h to 4h funding on a day of their history; the
    # jitter is the most ms an event is late (about one event in four; 0: every event on the hour).
    funding_4h_fraction: float = 0.34
    funding_jitter_ms: int = 9

    # Websocket
    ws_intermediate: bool = True  # x:false updates
    ws_intermediate_per_s: float = 4.0  # at most this many update rounds per real second per connection
    ws_close_lag_ms: int = 10
    ws_close_quiet: bool = True  # send x:true for a candle without trades (UNVERIFIED)
    ws_heartbeat_s: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"spot": 20.0, "um": 180.0, "cm": 180.0})
    )
    ws_stream_caps: Mapping[str, int] = field(
        default_factory=lambda: _frozen({m.name: m.ws_stream_cap for m in MARKETS.values()})
    )
    ws_msgs_per_s: Mapping[str, int] = field(
        default_factory=lambda: _frozen({m.name: m.ws_msgs_per_sec for m in MARKETS.values()})
    )
    ws_update_ms: Mapping[str, int] = field(
        default_factory=lambda: _frozen({m.name: m.ws_update_ms for m in MARKETS.values()})
    )
    ws_catchup_max: int = 1440  # closing boundaries replayed after a clock jump (1s streams: seconds)
    # spot kline_1s: x:false updates every this many virtual ms (Binance: 1000; others ws_update_ms)
    ws_update_ms_1s: int = 1000
    ws_lifetime_s: float | None = None  # close connections after this many virtual seconds (Binance: 86400)

    # Archive
    daily_lag_s: float = 6 * 3600.0  # virtual seconds after the day ends
    monthly_lag_s: float = 2 * 86_400.0  # after the month's last candle closes
    list_max_keys: int = 1000
    list_next_marker: bool = True
    list_exact_size: bool = False  # True builds every listed zip to report its exact Size (slow)
    spot_us_from: str = "2025-01-01"
    # Monthly spot 1s files (~2.6M rows, ~100 MB of CSV per symbol and month): listed and served, built
    # on every request as a stream (one day in memory at a time, never cached; their .CHECKSUM is a
    # second pass). False leaves them out of the listing (404), as if Binance published daily 1s only.
    archive_monthly_1s: bool = True
    futures_header_from: Mapping[str, str | None] = field(
        default_factory=lambda: _frozen({"um": "2022-05-01", "cm": "2022-05-01"})
    )
    futures_header_fraction: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"um": 1.0, "cm": 0.3})
    )

    inactive_status: Mapping[str, str] = field(
        default_factory=lambda: _frozen({"spot": "BREAK", "um": "CLOSE", "cm": "CLOSE"})
    )
    delivered_status: str = "DELIVERING"
    zombie_minutes: int = 0  # zero-volume candles after a perpetual's delisting (module doc)

    cache_mb: int = 256  # budget of the generated-data caches
    cache_1s_mb: int = 64  # separate budget of the 1s caches (seconds of a day, 1s row blocks, daily 1s zips)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.n_symbols < 3 or any(v < 3 for v in self.n_symbols_by_market.values()):
            raise ConfigError("the simulator needs at least 3 symbols per market")
        if self.speed < 0:
            raise ConfigError("speed must be >= 0")
        if self.history_days < 1:
            raise ConfigError("history_days must be >= 1")
        if self.weight_window not in ("fixed", "sliding"):
            raise ConfigError("weight_window must be 'fixed' or 'sliding'")
        for m in self.n_symbols_by_market:
            if m not in MARKETS:
                raise ConfigError(f"unknown market {m!r} in n_symbols_by_market")

    def symbols_in(self, market: str) -> int:
        return int(self.n_symbols_by_market.get(market, self.n_symbols))

    def start_ms(self) -> int:
        """The configured start in ms; the real time (to the second) when ``start`` is None."""
        if self.start is None:
            return int(time.time()) * 1000
        return to_ms(self.start)

    def resolved(self) -> SimConfig:
        """A copy whose ``start`` is fixed (so every component sees the same instant)."""
        return self if isinstance(self.start, int) else replace(self, start=self.start_ms())
