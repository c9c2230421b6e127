"""Typed, frozen settings with one precedence order: defaults < lake.toml < LAKE_* env < CLI flags.

The config file is the one named by ``--config`` or ``LAKE_CONFIG``; otherwise ``./lake.toml`` if it
exists. Its keys are the field names below, at top level or inside any table (tables only group keys
for the reader, e.g. ``[endpoints]``). Every field can also be set by ``LAKE_<FIELD>`` in upper case.

Endpoints resolve from general to specific: Binance's URLs, then ``sim_url`` (every URL of a
``lake sim`` server), then ``rest_url``/``ws_url`` (all markets), then the per-market ones.
Secrets (Quantclass key, webhook secret) are never shown by ``repr`` and never logged.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lake.binance.markets import MARKETS, Endpoints
from lake.errors import ConfigError

__all__ = ["SECRET_FIELDS", "Settings", "load_settings"]

SECRET_FIELDS = frozenset({"quantclass_api_key", "quantclass_uuid", "webhook_secret"})


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Construct with ``load_settings``; tests may build one directly."""

    root: str = "./lake-data"
    # Where cross-process state (weight budget, locks for object-store roots) lives; must be local.
    state_dir: str = ""
    sim_url: str = ""
    rest_url: str = ""
    spot_rest_url: str = ""
    um_rest_url: str = ""
    cm_rest_url: str = ""
    ws_url: str = ""
    spot_ws_url: str = ""
    um_ws_url: str = ""
    cm_ws_url: str = ""
    archive_url: str = ""
    archive_list_url: str = ""
    quantclass_url: str = ""
    quantclass_api_key: str = field(default="", repr=False)
    quantclass_uuid: str = field(default="", repr=False)
    webhook_url: str = ""
    webhook_kind: str = "json"  # "json" or "dingtalk"
    webhook_secret: str = field(default="", repr=False)
    http_timeout: float = 10.0
    max_concurrency: int = 64

    @property
    def endpoints(self) -> Endpoints:
        ep = Endpoints.simulator(self.sim_url) if self.sim_url else Endpoints()
        if self.rest_url:
            ep = ep.with_rest(self.rest_url)
        if self.ws_url:
            ep = ep.with_ws(self.ws_url)
        for m in MARKETS:
            if url := getattr(self, f"{m}_rest_url"):
                ep = ep.with_rest(url, [m])
            if url := getattr(self, f"{m}_ws_url"):
                ep = ep.with_ws(url, [m])
        if self.archive_url:
            ep = replace(ep, archive=self.archive_url.rstrip("/"))
        if self.archive_list_url:
            ep = replace(ep, archive_list=self.archive_list_url.rstrip("/"))
        if self.quantclass_url:
            ep = replace(ep, quantclass=self.quantclass_url.rstrip("/"))
        return ep

    @property
    def state_path(self) -> Path:
        """Local directory for cross-process state; defaults to ``<root>/.state`` for local roots."""
        if self.state_dir:
            return Path(self.state_dir)
        if "://" in self.root and not self.root.startswith("file://"):
            return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lake" / "state"
        return Path(self.root.removeprefix("file://")) / ".state"

    def with_overrides(self, **values: Any) -> Settings:
        """Apply CLI flags: ``None`` means "not given" and keeps the current value."""
        given = {k: v for k, v in values.items() if v is not None}
        return _coerce(self, given, "flag")


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}


def _coerce(base: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    out: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in _FIELD_TYPES:
            valid = ", ".join(sorted(_FIELD_TYPES))
            raise ConfigError(f"unknown setting {key!r} in {origin}; valid: {valid}")
        kind = _FIELD_TYPES[key]
        try:
            if kind in ("int", int):
                out[key] = int(raw)
            elif kind in ("float", float):
                out[key] = float(raw)
            elif isinstance(raw, (list, dict, bool)):  # a TOML array or table where text belongs
                raise TypeError(f"not a string: {raw!r}")
            else:
                out[key] = str(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {key!r} in {origin}: expected {kind}, got {raw!r}") from exc
    if "webhook_kind" in out and out["webhook_kind"] not in ("json", "dingtalk"):
        raise ConfigError(f"webhook_kind must be 'json' or 'dingtalk', got {out['webhook_kind']!r}")
    if "http_timeout" in out and not (math.isfinite(out["http_timeout"]) and out["http_timeout"] > 0):
        raise ConfigError(
            f"setting 'http_timeout' in {origin}: expected seconds > 0, got {values['http_timeout']!r}"
        )
    if "max_concurrency" in out and out["max_concurrency"] < 1:
        raise ConfigError(
            f"setting 'max_concurrency' in {origin}: expected an int >= 1, got {values['max_concurrency']!r}"
        )
    for key, value in out.items():
        if key.endswith("_url") and value and not _URL.match(value):
            # A typo here would otherwise surface as retried "transient" errors (exit 3).
            raise ConfigError(
                f"setting {key!r} in {origin}: expected an http(s):// or ws(s):// URL, got {value!r}"
            )
    return replace(base, **out)


_URL = re.compile(r"^(https?|wss?)://[^/\s]+[^\s]*$")


def _flatten(doc: Mapping[str, Any], path: str, flat: dict[str, Any] | None = None) -> dict[str, Any]:
    flat = {} if flat is None else flat
    for key, value in doc.items():
        if isinstance(value, Mapping):
            _flatten(value, path, flat)
        else:
            if key in flat:  # also across tables: [a] root = … and [b] root = …
                raise ConfigError(f"setting {key!r} appears twice in {path}")
            flat[key] = value
    return flat


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings: defaults < config file < ``LAKE_*`` env vars < ``overrides`` (CLI flags).

    ``env`` defaults to ``os.environ``; tests pass their own mapping to stay isolated.
    """
    env = os.environ if env is None else env
    settings = Settings()
    path = config or env.get("LAKE_CONFIG")
    if path is None and Path("lake.toml").is_file():
        path = "lake.toml"
    if path:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text") from exc
        except OSError as exc:  # a directory, no read permission, …
            raise ConfigError(f"config file {p} cannot be read: {exc.strerror or exc}") from exc
        settings = _coerce(settings, _flatten(doc, str(p)), str(p))
    from_env = {name: env[f"LAKE_{name.upper()}"] for name in _FIELD_TYPES if env.get(f"LAKE_{name.upper()}")}
    settings = _coerce(settings, from_env, "environment")
    return settings.with_overrides(**overrides)
