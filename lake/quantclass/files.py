"""The Quantclass 1h file format: a 7z archive holding one CSV of candles of one offset.

CSV columns (facts: ../shared/reference/quantclass.md): ``candle_begin_time`` (UTC, written without a
zone, e.g. ``2024-10-08 05:00:00``), ``symbol``, ``open, high, low, close, volume, quote_volume,
trade_num, taker_buy_base_asset_volume, taker_buy_quote_asset_volume`` and ``tag`` (``HasSwap`` /
``NoSwap``). Files are named ``<YYYYmmddHHMM>-<spot|swap>_1h<offset>.7z`` with the time in
Asia/Shanghai. Reading is lenient where real files vary: lines before the header (a disclaimer) are
skipped, GBK is accepted when the text is not UTF-8, extra columns are ignored, times may carry a
``T`` or a UTC suffix, symbols written ``BTC-USDT`` become Binance's ``BTCUSDT``, and a whole
``trade_num`` written as a float (``12.0``) is that count. A fractional one (``12.5``) is a
``DataError``: no count of trades, and truncated it would compare as a match.
"""

from __future__ import annotations

import datetime as dt
import io
import lzma
import re
import struct
import zlib
from dataclasses import dataclass

import polars as pl
import py7zr
from py7zr.io import BytesIOFactory

from lake.errors import DataError, ValidationError
from lake.schema import OFFSET_SCHEMA

__all__ = [
    "CSV_COLUMNS",
    "KINDS",
    "SHANGHAI",
    "FileName",
    "decode_archive",
    "encode_archive",
    "kind_of",
    "read_candles_csv",
    "write_candles_csv",
]

# China has had no daylight saving time since 1991: Asia/Shanghai is UTC+8 for every date lake handles.
SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
VALUE_COLUMNS = [c for c in OFFSET_SCHEMA if c not in ("candle_begin_time", "n_base")]
CSV_COLUMNS = ["candle_begin_time", "symbol", *VALUE_COLUMNS, "tag"]
KINDS = {"usdt_spot": "spot", "usdt_perp": "swap"}  # lake trade type -> Quantclass file kind
_NAME_RE = re.compile(r"(?:(\d{12})-)?(spot|swap)_1h(\d+m)\.(7z|csv)")
_MAX_CSV_BYTES = 1 << 30
# What py7zr lets escape from a damaged archive (a cut download, a damaged saved file) besides its own
# errors: a corrupted LZMA stream raises lzma's error, a damaged header KeyError, TypeError or an
# AssertionError. The bytes come from outside, so each is a DataError, not a traceback.
_UNREADABLE = (
    py7zr.exceptions.ArchiveError,
    py7zr.exceptions.PasswordRequired,
    py7zr.exceptions.AbsolutePathError,
    lzma.LZMAError,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
)


def kind_of(trade_type: str) -> str:
    """``spot`` or ``swap``: which Quantclass file holds ``trade_type``."""
    try:
        return KINDS[trade_type]
    except KeyError:
        raise ValidationError(f"Quantclass serves {', '.join(KINDS)} only, not {trade_type!r}") from None


@dataclass(frozen=True, slots=True)
class FileName:
    """``202410081500-spot_1h0m.7z``: when (Asia/Shanghai), which kind, which offset."""

    ts: dt.datetime | None
    kind: str
    offset: str
    ext: str = "7z"

    @classmethod
    def parse(cls, name: str) -> FileName | None:
        m = _NAME_RE.fullmatch(name)
        if m is None:
            return None
        ts = dt.datetime.strptime(m[1], "%Y%m%d%H%M").replace(tzinfo=SHANGHAI) if m[1] else None
        return cls(ts, m[2], m[3], m[4])

    def __str__(self) -> str:
        prefix = f"{self.ts.astimezone(SHANGHAI):%Y%m%d%H%M}-" if self.ts is not None else ""
        return f"{prefix}{self.kind}_1h{self.offset}.{self.ext}"


def write_candles_csv(df: pl.DataFrame) -> bytes:
    """Candles (``CSV_COLUMNS``) as the CSV the archives hold."""
    out = df.select(CSV_COLUMNS).with_columns(
        pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S")
    )
    return out.write_csv(float_precision=None).encode()


def read_candles_csv(data: bytes) -> pl.DataFrame:
    """Parse one Quantclass CSV into ``candle_begin_time`` (UTC), ``symbol``, values and ``tag``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("gbk", errors="replace")
    start = text.find("candle_begin_time")
    if start < 0:
        raise DataError("Quantclass CSV without a candle_begin_time header")
    text = text[text.rfind("\n", 0, start) + 1 :]
    try:
        raw = pl.read_csv(io.StringIO(text), infer_schema=False)
        raw = raw.rename({c: c.strip() for c in raw.columns if c != c.strip()})  # "a, b" headers
    except pl.exceptions.PolarsError as exc:  # ("open, open": a duplicate once stripped, too)
        raise DataError(f"unreadable Quantclass CSV: {exc}") from exc
    missing = [c for c in CSV_COLUMNS if c not in raw.columns and c != "tag"]
    if missing:
        raise DataError(f"Quantclass CSV lacks columns: {', '.join(missing)}")
    trade_num = pl.col("trade_num").str.strip_chars()
    trade_num_real = trade_num.cast(pl.Float64).fill_nan(None)
    t = (
        pl.col("candle_begin_time")
        .str.strip_chars()
        .str.replace(r"(\+00:?00|Z| UTC)$", "")
        .str.replace("T", " ", literal=True)
    )
    try:
        out = raw.select(
            # with or without seconds and fractions of a second
            pl.coalesce(
                t.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="ms", strict=False),
                t.str.to_datetime("%Y-%m-%d %H:%M", time_unit="ms", strict=False),
            )
            .dt.replace_time_zone("UTC")
            .alias("candle_begin_time"),
            # Binance's spelling: Quantclass's own files elsewhere write BTC-USDT
            pl.col("symbol").str.strip_chars().str.replace_all(r"[-/]", "").str.to_uppercase(),
            # "nan" is a missing value, as pandas reads it and the seed's max then skips it
            *(
                pl.col(c).str.strip_chars().cast(pl.Float64).fill_nan(None)
                for c in VALUE_COLUMNS
                if c != "trade_num"
            ),
            # A count read as written, exact past 2**53; a float writer's "12.0" is 12, but "12.5"
            # is no count of trades: truncated, it compared as a match (refused below).
            pl.coalesce(
                trade_num.cast(pl.Int64, strict=False), trade_num_real.cast(pl.Int64, strict=False)
            ).alias("trade_num"),
            trade_num_real.alias("_trade_num_real"),
            (pl.col("tag") if "tag" in raw.columns else pl.lit(None, pl.String)).alias("tag"),
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"malformed Quantclass CSV values: {exc}") from exc
    bad = out["candle_begin_time"].is_null() & raw["candle_begin_time"].is_not_null()
    if bad.any():
        first = raw["candle_begin_time"].filter(bad)[0]
        raise DataError(f"malformed Quantclass CSV values: unparsable candle_begin_time {first!r}")
    real = out["_trade_num_real"]
    bad = real.is_not_null() & (out["trade_num"].is_null() | (out["trade_num"].cast(pl.Float64) != real))
    if bad.any():
        i = bad.arg_true()[0]
        value, symbol, time = raw["trade_num"][i].strip(), raw["symbol"][i], raw["candle_begin_time"][i]
        raise DataError(
            f"malformed Quantclass CSV values: trade_num {value!r} ({symbol} at {time}) is not a whole number"
        )
    return out.select(CSV_COLUMNS)


def encode_archive(csv: bytes, arcname: str) -> bytes:
    """A 7z archive holding ``csv`` as ``arcname``."""
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.writestr(csv, arcname)
    return buf.getvalue()


def decode_archive(data: bytes) -> pl.DataFrame:
    """The candles of a Quantclass 7z archive (its one CSV; several are concatenated)."""
    factory = BytesIOFactory(_MAX_CSV_BYTES)
    try:
        with py7zr.SevenZipFile(io.BytesIO(data), "r") as archive:
            names = [n for n in archive.getnames() if n.lower().endswith(".csv")]
            archive.extractall(factory=factory)
    except _UNREADABLE as exc:
        raise DataError(f"not a readable 7z archive: {type(exc).__name__}: {exc}") from exc
    if not names:
        raise DataError("the 7z archive holds no CSV")
    if lost := [n for n in names if n not in factory.products]:  # listed, never extracted: damaged
        raise DataError(f"not a readable 7z archive: {lost[0]!r} listed but not extracted")
    return pl.concat([read_candles_csv(factory.get(n).read()) for n in names])
