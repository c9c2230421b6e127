"""Runtime fault state: set from ``FaultConfig`` at start, changed mid-run via Python or ``POST /_sim/faults``.

JSON shape (``GET /_sim/faults``; ``POST`` accepts any subset of the same keys)::

    {"ws_drop_every_s": null, "ws_close_delay_s": 0.0, "ws_skip_close_symbols": [],
     "rest_error_rate": 0.0, "rest_error_status": 503, "rest_hang_rate": 0.0, "rest_hang_s": 30.0,
     "force_429": 0, "corrupt_zips": [], "unserved_zips": [], "unserved_status": 503, "wrong_checksums": {"<zip key or name>": null | heal_after_n},
     "missing_days": ["BTCUSDT/2024-01-01", "um/ETHUSDT/2024-01-02"], "seed": 0}

Which REST calls fail is drawn from a ``random.Random(seed)``, so a run is reproducible.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict
from typing import Any

from lake.errors import ValidationError
from lake.sim.config import FaultConfig

__all__ = ["Faults"]

_FLOATS = ("ws_close_delay_s", "rest_error_rate", "rest_hang_rate", "rest_hang_s")
_SETS = ("ws_skip_close_symbols", "corrupt_zips", "unserved_zips", "missing_days")


class Faults:
    """Mutable fault knobs shared by the REST, websocket and archive handlers."""

    def __init__(self, config: FaultConfig | None = None):
        cfg = config or FaultConfig()
        self._lock = threading.Lock()
        self.ws_drop_every_s: float | None = cfg.ws_drop_every_s
        self.ws_close_delay_s = float(cfg.ws_close_delay_s)
        self.ws_skip_close_symbols: set[str] = set(cfg.ws_skip_close_symbols)
        self.rest_error_rate = float(cfg.rest_error_rate)
        self.rest_error_status = int(cfg.rest_error_status)
        self.rest_hang_rate = float(cfg.rest_hang_rate)
        self.rest_hang_s = float(cfg.rest_hang_s)
        self.force_429 = int(cfg.force_429)
        self.corrupt_zips: set[str] = set(cfg.corrupt_zips)
        self.unserved_zips: set[str] = set(cfg.unserved_zips)
        self.unserved_status = int(cfg.unserved_status)
        self.wrong_checksums: dict[str, int | None] = dict(cfg.wrong_checksums)
        self.missing_days: set[str] = set(cfg.missing_days)
        self.seed = cfg.seed
        self._rng = random.Random(cfg.seed)

    # ---- REST -------------------------------------------------------------------------------------
    def rest_fault(self) -> str | None:
        """``"error"``, ``"hang"`` or None for the next REST call (draws only when a rate is set)."""
        with self._lock:
            if self.rest_error_rate <= 0 and self.rest_hang_rate <= 0:
                return None
            x = self._rng.random()
            if x < self.rest_error_rate:
                return "error"
            if x < self.rest_error_rate + self.rest_hang_rate:
                return "hang"
            return None

    def take_forced_429(self) -> bool:
        with self._lock:
            if self.force_429 > 0:
                self.force_429 -= 1
                return True
            return False

    # ---- archive ----------------------------------------------------------------------------------
    @staticmethod
    def _matches(refs: set[str] | dict[str, Any], key: str) -> str | None:
        if key in refs:
            return key
        name = key.rsplit("/", 1)[-1]
        return name if name in refs else None

    def is_corrupt(self, key: str) -> bool:
        return self._matches(self.corrupt_zips, key) is not None

    def is_unserved(self, key: str) -> bool:
        return self._matches(self.unserved_zips, key) is not None

    def checksum_is_wrong(self, key: str) -> bool:
        with self._lock:
            ref = self._matches(self.wrong_checksums, key)
            if ref is None:
                return False
            left = self.wrong_checksums[ref]
            return left is None or left > 0

    def note_zip_download(self, key: str) -> None:
        """A wrong checksum set to heal after N downloads counts this download."""
        with self._lock:
            ref = self._matches(self.wrong_checksums, key)
            if ref is not None:
                left = self.wrong_checksums[ref]
                if left is not None and left > 0:
                    self.wrong_checksums[ref] = left - 1

    def is_missing(self, market: str, symbol: str, date: str) -> bool:
        return f"{symbol}/{date}" in self.missing_days or f"{market}/{symbol}/{date}" in self.missing_days

    # ---- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            out = {k: getattr(self, k) for k in asdict(FaultConfig())}
        for k in _SETS:
            out[k] = sorted(out[k])
        out["wrong_checksums"] = dict(out["wrong_checksums"])
        return out

    def update(self, patch: dict[str, Any]) -> None:
        """Apply a partial update (the ``POST /_sim/faults`` body); unknown keys are an error."""
        known = set(asdict(FaultConfig()))
        bad = set(patch) - known
        if bad:
            raise ValidationError(f"unknown fault knobs: {', '.join(sorted(bad))}")
        with self._lock:
            for k, v in patch.items():
                try:
                    if k in _SETS:
                        setattr(self, k, {str(x) for x in v})
                    elif k == "wrong_checksums":
                        setattr(
                            self, k, {str(a): (None if b is None else int(b)) for a, b in dict(v).items()}
                        )
                    elif k == "ws_drop_every_s":
                        self.ws_drop_every_s = None if v is None else float(v)
                    elif k in _FLOATS:
                        setattr(self, k, float(v))
                    elif k == "seed":
                        self.seed = int(v)
                        self._rng = random.Random(self.seed)
                    else:
                        setattr(self, k, int(v))
                except (TypeError, ValueError) as exc:
                    raise ValidationError(f"bad value for fault {k!r}: {v!r}") from exc
