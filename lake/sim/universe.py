"""The simulated symbol universe: names, precisions, listing schedules, maintenance windows.

Names follow each market's style (``BTCUSDT``, ``ETHBTC``, ``BTCUSD_PERP``, ``BTCUSDT_250328``) and do not
depend on the seed; a symbol's parameters (start price, tick size, liquidity) depend on the seed and its
name only, so ``BTCUSDT``'s candles are the same whatever ``n_symbols`` is. Listing events are placed at
fixed offsets before the configured start day, scaled down when the history is short.

Awkward symbols (``roles``) sit at fixed positions of each market's main trade type (usdt_spot,
usdt_perp, coin_perp): index 2 ``illiquid`` (many zero-volume minutes), 3 ``recent`` (short history),
4 ``delisted``, 5 ``relisted`` (delisted, then listed again months later). Expired delivery contracts
are ``delivered``. Maintenance windows are per market: the same minutes are missing for every symbol.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from lake.binance.markets import MARKETS
from lake.errors import ConfigError
from lake.sim.clock import MS_PER_DAY, MS_PER_MINUTE, to_ms
from lake.sim.config import SimConfig
from lake.sim.quarters import quarter_expiries

__all__ = ["BTC_USD", "KNOWN_BASES", "MAX_LOTS_PER_MINUTE", "SymbolInfo", "Universe", "stable_hash"]

KNOWN_BASES: dict[str, float] = {
    "BTC": 60000, "ETH": 3000, "BNB": 550, "SOL": 150, "XRP": 0.6, "DOGE": 0.15, "ADA": 0.45,
    "AVAX": 30, "LINK": 15, "DOT": 6, "LTC": 80, "TRX": 0.12, "BCH": 350, "ATOM": 8, "UNI": 8,
    "ETC": 25, "FIL": 5, "APT": 9, "ARB": 1.0, "OP": 2.0, "NEAR": 5, "ICP": 10, "AAVE": 150,
    "INJ": 25, "SUI": 1.5, "XLM": 0.11, "HBAR": 0.08, "VET": 0.03, "ALGO": 0.18, "SAND": 0.4,
    "MANA": 0.4, "AXS": 7, "EOS": 0.7, "XTZ": 0.9, "THETA": 1.5, "EGLD": 40, "FTM": 0.5,
    "GRT": 0.2, "RUNE": 5, "KAVA": 0.7, "CRV": 0.5, "MKR": 2500, "COMP": 60, "SNX": 3,
    "ZEC": 30, "DASH": 30, "NEO": 12, "QTUM": 3, "IOTA": 0.25, "ZIL": 0.02,
}  # fmt: skip
BTC_USD = KNOWN_BASES["BTC"]  # converts BTC-quoted notionals when sizing volumes
ROLE_POSITIONS = {"illiquid": 2, "recent": 3, "delisted": 4, "relisted": 5}
CJK_BASE = "币安人生"  # a real USDⓈ-M base asset (2025-10), listed with SimConfig.cjk_symbol
MAIN_TYPE = {"spot": "usdt_spot", "um": "usdt_perp", "cm": "coin_perp"}
MAX_LOTS_PER_MINUTE = 10**11  # keeps monthly integer sums far below 2**53
# Days the generator can produce (see gen.WALK_DAY0 / WALK_DAYS): 2015-01-01 .. 2041-12.
CALENDAR = (to_ms("2015-01-01"), to_ms("2015-01-01") + 365 * 27 * MS_PER_DAY)


def stable_hash(text: str) -> int:
    """A 63-bit hash that does not change between processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _synthetic_base(i: int) -> str:
    letters = []
    for _ in range(3):
        i, r = divmod(i, 26)
        letters.append(chr(65 + r))
    return "X" + "".join(reversed(letters))


def bases(n: int, exclude: str | None = None) -> list[str]:
    """The first ``n`` base assets: the known ones, then synthetic ``XAAA``, ``XAAB``, …"""
    out = [b for b in KNOWN_BASES if b != exclude][:n]
    i = 0
    while len(out) < n:
        out.append(_synthetic_base(i))
        i += 1
    return out


def base_price_usd(base: str) -> float:
    if base in KNOWN_BASES:
        return float(KNOWN_BASES[base])
    rng = np.random.default_rng(stable_hash("base:" + base))
    return float(10 ** rng.uniform(-1.3, 2.5))


@dataclass(slots=True)
class SymbolInfo:
    """One simulated symbol. Mutable only through ``Universe`` (listing events bump ``version``)."""

    market: str
    symbol: str
    trade_type: str
    base: str
    quote: str
    margin_asset: str
    contract_type: str | None  # PERPETUAL / quarterly; None on spot
    delivery_ms: int | None
    segments: list[tuple[int, int | None]]  # listed [start, end) in ms; end None = still listed
    price_dec: int
    qty_dec: int
    quote_dec: int  # decimals of quote volume (COIN-M: of the base-asset volume)
    contract_size: int
    p0: float  # reference price in quote units
    daily_vol: float
    liquidity: float  # mean notional per minute in quote units (COIN-M: USD)
    trade_size: float  # mean notional per trade, same units as liquidity
    zero_rate: float
    key: int
    roles: tuple[str, ...] = ()
    version: int = 0
    corrections: dict[int, int] = field(default_factory=dict)  # 1m open -> lots added by a re-upload

    @property
    def onboard_ms(self) -> int:
        """Start of the latest listing (a relisted symbol reports its relisting)."""
        return self.segments[-1][0]

    @property
    def first_ms(self) -> int:
        return self.segments[0][0]

    @property
    def end_ms(self) -> int | None:
        return self.segments[-1][1]

    def listed_at(self, t: int) -> bool:
        return any(a <= t and (b is None or t < b) for a, b in self.segments)


class Universe:
    """All symbols of the three markets and the market-wide maintenance windows."""

    def __init__(self, config: SimConfig):
        self.config = config.resolved()
        self.start_ms: int = int(self.config.start)  # type: ignore[arg-type]
        self.start_day_ms = self.start_ms - self.start_ms % MS_PER_DAY
        if not CALENDAR[0] + MS_PER_DAY <= self.start_day_ms < CALENDAR[1] - 400 * MS_PER_DAY:
            raise ConfigError("the simulator's start must be between 2015-01-02 and 2040")
        # The price walks are defined from 2015-01-01: history cannot begin earlier.
        self.history_start = max(self.start_day_ms - self.config.history_days * MS_PER_DAY, CALENDAR[0])
        self.symbols: dict[str, dict[str, SymbolInfo]] = {m: {} for m in MARKETS}
        self.maintenance: dict[str, list[tuple[int, int]]] = {m: [] for m in MARKETS}
        self._build()

    # ---- construction ---------------------------------------------------------------------------
    def _days_back(self, days: float) -> int:
        """A day offset before the start day, shrunk to fit in a short history."""
        h = self.config.history_days
        return int(min(days, max(1.0, h * days / 400.0)))

    def _build(self) -> None:
        cfg = self.config
        for m in MARKETS:
            n = cfg.symbols_in(m)
            for tt, names in self._names(m, n):
                for name, base, quote, delivery in names:
                    self._add(m, tt, name, base, quote, delivery)
        if cfg.awkward:
            self._assign_roles()
        self._build_maintenance()

    def _names(self, market: str, n: int) -> list[tuple[str, list[tuple[str, str, str, int | None]]]]:
        if market == "spot":
            n_btc = n_usdc = max(1, n // 5)
            n_usdt = n - n_btc - n_usdc
            return [
                ("usdt_spot", [(f"{b}USDT", b, "USDT", None) for b in bases(n_usdt)]),
                ("btc_spot", [(f"{b}BTC", b, "BTC", None) for b in bases(n_btc, exclude="BTC")]),
                ("usdc_spot", [(f"{b}USDC", b, "USDC", None) for b in bases(n_usdc)]),
            ]
        if market == "um":
            n_usdc = max(1, n // 8)
            n_deli = max(1, round(n * 0.3))
            n_usdt = n - n_usdc - n_deli
            cjk: list[tuple[str, str, str, int | None]] = (
                [(f"{CJK_BASE}USDT", CJK_BASE, "USDT", None)] if self.config.cjk_symbol else []
            )
            return [
                ("usdt_perp", [(f"{b}USDT", b, "USDT", None) for b in bases(n_usdt)] + cjk),
                ("usdc_perp", [(f"{b}USDC", b, "USDC", None) for b in bases(n_usdc)]),
                ("usdt_deli", [(f"{b}USDT_{s}", b, "USDT", d) for b, s, d in self._deliveries(n_deli)]),
            ]
        n_deli = max(1, round(n * 0.4))
        return [
            ("coin_perp", [(f"{b}USD_PERP", b, "USD", None) for b in bases(n - n_deli)]),
            ("coin_deli", [(f"{b}USD_{s}", b, "USD", d) for b, s, d in self._deliveries(n_deli)]),
        ]

    def _deliveries(self, n: int) -> list[tuple[str, str, int]]:
        """Quarterly contracts: per base the current, next and previous (delivered) quarter."""
        q = quarter_expiries(self.start_ms, before=1, after=2)
        order = [q[1], q[2], q[0]]  # current, next, previous
        out = []
        for k in range(n):
            base = bases(k // 3 + 1)[-1]
            exp = order[k % 3]
            out.append((base, _yymmdd(exp), exp))
        return out

    def _add(
        self, market: str, tt: str, name: str, base: str, quote: str, delivery: int | None
    ) -> SymbolInfo:
        cfg = self.config
        key = stable_hash(f"{cfg.seed}:{market}:{name}")
        rng = np.random.default_rng(key)
        p_usd = base_price_usd(base) * float(rng.uniform(0.9, 1.1))
        quote_usd = BTC_USD if quote == "BTC" else 1.0
        p0 = p_usd / quote_usd
        major = base in ("BTC", "ETH")
        known = base in KNOWN_BASES
        liq_usd = 10 ** float(
            rng.uniform(5.5, 6.5) if major else rng.uniform(3.5, 5.0) if known else rng.uniform(2, 4)
        )
        lg = math.floor(math.log10(p0))
        lg_usd = math.floor(math.log10(p_usd))
        price_dec = _clamp(5 - lg, 0, 8)
        if market == "spot":
            qty_dec = _clamp(lg_usd + 1, 0, 8)
        elif market == "um":
            qty_dec = _clamp(lg_usd - 1, 0, 8)
        else:
            qty_dec = 0
        contract_size = (100 if base == "BTC" else 10) if market == "cm" else 0
        liquidity = liq_usd / quote_usd
        # Quote-volume decimals chosen so a month of per-minute maxima (50x the mean) stays below 2**52.
        cap = 50.0 * (liq_usd / p_usd if market == "cm" else liquidity)
        quote_dec = _clamp(math.floor(math.log10(2.0**52 / (44_640 * cap))), 0, 8)
        first = self.history_start
        if delivery is not None:
            first = max(first, _two_quarters_before(delivery))
        info = SymbolInfo(
            market=market, symbol=name, trade_type=tt, base=base, quote=quote,
            margin_asset=base if market == "cm" else quote,
            contract_type=None if market == "spot" else ("PERPETUAL" if delivery is None else "CURRENT_QUARTER"),
            delivery_ms=delivery,
            segments=[(first, delivery)],
            price_dec=price_dec, qty_dec=qty_dec, quote_dec=quote_dec, contract_size=contract_size,
            p0=p0, daily_vol=float(rng.uniform(0.02, 0.05)), liquidity=liquidity,
            trade_size=10 ** float(rng.uniform(1.5, 3.0)) / quote_usd,
            zero_rate=cfg.zero_volume_rate, key=key,
            roles=("delivered",) if delivery is not None and delivery <= self.start_ms else (),
        )  # fmt: skip
        # Copy-on-write: a symbol listed mid-run must not change a dict another thread is iterating.
        self.symbols[market] = {**self.symbols[market], name: info}
        return info

    def _assign_roles(self) -> None:
        day, cfg = MS_PER_DAY, self.config
        for m, tt in MAIN_TYPE.items():
            names = [s for s, i in self.symbols[m].items() if i.trade_type == tt]
            for role, pos in ROLE_POSITIONS.items():
                if pos >= len(names):
                    continue
                info = self.symbols[m][names[pos]]
                info.roles += (role,)
                if role == "illiquid":
                    info.zero_rate = cfg.illiquid_zero_volume_rate
                    info.liquidity /= 100.0
                elif role == "recent":
                    at = self.start_day_ms - self._days_back(cfg.recent_listing_days) * day + 8 * 3_600_000
                    info.segments = [(max(at, self.history_start), None)]
                elif role == "delisted":
                    end = self.start_day_ms - self._days_back(45) * day + 3 * 3_600_000
                    info.segments = [(self.history_start, max(end, self.history_start + day))]
                elif role == "relisted":
                    off = self.start_day_ms - self._days_back(300) * day + 2 * 3_600_000
                    on = self.start_day_ms - self._days_back(120) * day + 6 * 3_600_000
                    off = max(off, self.history_start + day)
                    info.segments = [(self.history_start, off), (max(on, off + day), None)]

    def _build_maintenance(self) -> None:
        cfg = self.config
        if cfg.maintenance is not None:
            for m, a, b in cfg.maintenance:
                self.maintenance[m].append((_floor_min(to_ms(a)), _floor_min(to_ms(b))))
        elif cfg.awkward:
            for idx, m in enumerate(MARKETS):
                w1 = self.start_day_ms - self._days_back(12 + idx) * MS_PER_DAY + (6 * 60 + 5) * MS_PER_MINUTE
                w2 = self.start_day_ms - self._days_back(200 + 7 * idx) * MS_PER_DAY + 60 * MS_PER_MINUTE
                self.maintenance[m] += [(w1, w1 + 155 * MS_PER_MINUTE), (w2, w2 + 60 * MS_PER_MINUTE)]
        for m in self.maintenance:
            self.maintenance[m].sort()

    # ---- queries ----------------------------------------------------------------------------------
    def get(self, market: str, symbol: str) -> SymbolInfo | None:
        return self.symbols.get(market, {}).get(symbol)

    def zombie_span(self, info: SymbolInfo) -> tuple[int, int] | None:
        """``[start, end)`` of the zero-volume candles a delisted perpetual keeps producing
        (``SimConfig.zombie_minutes``), or None."""
        end = info.end_ms
        if (
            self.config.zombie_minutes <= 0
            or info.market == "spot"
            or info.delivery_ms is not None
            or end is None
        ):
            return None
        return end, end + self.config.zombie_minutes * MS_PER_MINUTE

    def _spans(self, info: SymbolInfo) -> list[tuple[int, int | None]]:
        """Where the symbol has 1m candles, maintenance aside: its listings, then its zombie span."""
        zombie = self.zombie_span(info)
        return info.segments if zombie is None else [*info.segments, zombie]

    def valid_mask(self, info: SymbolInfo, opens: np.ndarray) -> np.ndarray:
        """Which 1m open times have a candle: listed (or a zombie) and outside maintenance."""
        ok = np.zeros(opens.shape, dtype=bool)
        for a, b in self._spans(info):
            ok |= (opens >= a) & (opens < (b if b is not None else np.iinfo(np.int64).max))
        for a, b in self.maintenance[info.market]:
            ok &= ~((opens >= a) & (opens < b))
        return ok

    def next_valid(self, info: SymbolInfo, t: int) -> int | None:
        """The first 1m open ≥ ``t`` (minute-aligned) that has a candle, or None."""
        t = -(-t // MS_PER_MINUTE) * MS_PER_MINUTE
        for a, b in self._spans(info):
            x = max(a, t)
            for ma, mb in self.maintenance[info.market]:
                if ma <= x < mb:
                    x = mb
            if b is None or x < b:
                return x
        return None

    def prev_valid(self, info: SymbolInfo, t: int) -> int | None:
        """The last 1m open ≤ ``t`` that has a candle, or None."""
        t = t - t % MS_PER_MINUTE
        for a, b in reversed(self._spans(info)):
            x = t if b is None else min(t, b - MS_PER_MINUTE)
            for ma, mb in reversed(self.maintenance[info.market]):
                if ma <= x < mb:
                    x = ma - MS_PER_MINUTE
            if x >= a:
                return x
        return None

    def has_data(self, info: SymbolInfo, start: int, end: int) -> bool:
        """Whether any 1m candle opens in ``[start, end)``."""
        x = self.next_valid(info, start)
        return x is not None and x < end

    def status(self, info: SymbolInfo, now: int) -> str:
        """The exchangeInfo status of ``info`` at virtual time ``now``."""
        if info.delivery_ms is not None and info.delivery_ms <= now:
            return self.config.delivered_status
        if info.listed_at(now):
            return "TRADING"
        if now < info.first_ms:
            return "PENDING_TRADING" if info.market != "spot" else "BREAK"
        return str(self.config.inactive_status.get(info.market, "BREAK"))

    def contract_type(self, info: SymbolInfo, now: int) -> str | None:
        if info.delivery_ms is None:
            return info.contract_type
        if info.delivery_ms <= now:
            return "CURRENT_QUARTER"
        upcoming = [q for q in quarter_expiries(now, before=0, after=2) if q > now]
        return "CURRENT_QUARTER" if info.delivery_ms <= upcoming[0] else "NEXT_QUARTER"


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def _floor_min(ms: int) -> int:
    return ms - ms % MS_PER_MINUTE


def _yymmdd(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%y%m%d")


def _two_quarters_before(delivery: int) -> int:
    """Quarterly contracts are listed when the contract two quarters earlier delivers."""
    return quarter_expiries(delivery - 1, before=2, after=0)[0]
