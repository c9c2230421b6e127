"""Typed, frozen settings with one precedence order: defaults < lake.toml < LAKE_* env < CLI flags.

The config file is the one named by ``--config`` or ``LAKE_CONFIG``; otherwise ``./lake.toml`` if it
exists. Its keys are the field names below, at top level or inside any table (tables only group keys
for the reader, e.g. ``[endpoints]``). Every field can also be set by ``LAKE_<FIELD>`` in upper case.

Each endpoint takes the key set by the highest source (flag > env > config file) among those that
cover it: ``sim_url`` (every URL of a ``lake sim`` server), ``rest_url``/``ws_url`` (all markets) and
the per-market or per-service key. Within one source the most specific key wins: ``sim_url`` <
``rest_url`` < ``um_rest_url``. So ``--sim-url`` sends everything to the simulator even when
lake.toml names ``um_rest_url``, and ``LAKE_SIM_URL`` with ``LAKE_UM_REST_URL`` sends um elsewhere.
Websocket keys take ``ws://``/``wss://`` URLs, the others ``http://``/``https://``; base URLs carry
no query string or fragment (lake appends paths to them; a path prefix such as
``https://mirror.example/binance/`` is kept).
Secrets (Quantclass key and UUID, webhook secret) are never shown by ``repr``, in an error or a log.
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
from urllib.parse import urlsplit

from lake.binance.markets import MARKETS, Endpoints
from lake.errors import ConfigError
from lake.net import is_loopback

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
    # where the Quantclass files are fetched from instead of the host the API names (a mirror; the
    # API answers absolute URLs, upyun.quantclass.cn in production): their path is kept
    quantclass_files_url: str = ""
    quantclass_api_key: str = field(default="", repr=False)
    quantclass_uuid: str = field(default="", repr=False)
    webhook_url: str = ""
    webhook_kind: str = "json"  # "json" or "dingtalk"
    webhook_secret: str = field(default="", repr=False)
    http_timeout: float = 10.0
    max_concurrency: int = 64
    # Streams per websocket connection, all markets or one (0: the market's, lowered by what a server
    # refused lately): a cap set here wins over both, e.g. once Binance has raised its limit.
    ws_stream_cap: int = 0
    spot_ws_stream_cap: int = 0
    um_ws_stream_cap: int = 0
    cm_ws_stream_cap: int = 0
    # Which source set each field (0 built in or given directly, 1 config file, 2 env, 3 flag): an
    # endpoint takes the key of the highest source among those covering it (see the module doc).
    _sources: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    def _winner(self, *keys: str) -> str | None:
        """The set key among ``keys`` (general → specific) from the highest source; ties: the last."""
        best: tuple[tuple[int, int], str] | None = None
        for rank, key in enumerate(keys):
            if getattr(self, key):
                score = (self._sources.get(key, 0), rank)
                if best is None or score > best[0]:
                    best = (score, key)
        return None if best is None else best[1]

    @property
    def endpoints(self) -> Endpoints:
        default = Endpoints()
        sim = Endpoints.simulator(self.sim_url) if self.sim_url else default

        def pick(keys: tuple[str, ...], sim_value: str, default_value: str) -> str:
            key = self._winner("sim_url", *keys)
            if key is None:
                return default_value
            return sim_value if key == "sim_url" else str(getattr(self, key)).rstrip("/")

        return Endpoints(
            rest={m: pick(("rest_url", f"{m}_rest_url"), sim.rest[m], default.rest[m]) for m in MARKETS},
            ws={m: pick(("ws_url", f"{m}_ws_url"), sim.ws[m], default.ws[m]) for m in MARKETS},
            archive=pick(("archive_url",), sim.archive, default.archive),
            archive_list=pick(("archive_list_url",), sim.archive_list, default.archive_list),
            quantclass=pick(("quantclass_url",), sim.quantclass, default.quantclass),
        )

    def ws_stream_cap_for(self, market: str) -> int | None:
        """The streams per connection set for ``market`` (``ws_stream_cap`` or its market's key, by
        the endpoints' precedence), or ``None``."""
        key = self._winner("ws_stream_cap", f"{market}_ws_stream_cap")
        cap = 0 if key is None else int(getattr(self, key))
        return cap if cap >= 1 else None

    @property
    def state_path(self) -> Path:
        """Local directory for cross-process state; defaults to ``<root>/.state`` for local roots."""
        if self.state_dir:
            return Path(self.state_dir)
        if "://" in self.root and not self.root.startswith("file://"):
            return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lake" / "state"
        return Path(self.root.removeprefix("file://")) / ".state"

    def budget_dir(self, base_url: str) -> Path:
        """Where the weight budget (and websocket connection attempts) of ``base_url`` is shared.

        Binance counts weight per IP, so by default every lake process of this user shares one
        directory whatever its root (``$XDG_CACHE_HOME/lake/state``, ``~/.cache/lake/state``): two
        lakes backfilled at once from one machine stay under one limit. ``state_dir``, when set,
        is used instead; a server on this machine (the simulator) keeps the lake's own
        ``state_path``, as each one counts for itself."""
        if self.state_dir or is_loopback(base_url):
            return self.state_path
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lake" / "state"

    def with_overrides(self, **values: Any) -> Settings:
        """Apply CLI flags: ``None`` means "not given" and keeps the current value."""
        given = {k: v for k, v in values.items() if v is not None}
        return _coerce(self, given, "the command line", _FLAG)


_FIELD_TYPES = {f.name: f.type for f in fields(Settings) if not f.name.startswith("_")}
_CONFIG, _ENV, _FLAG = 1, 2, 3
_WS_KEYS = frozenset({"ws_url", *(f"{m}_ws_url" for m in MARKETS)})


def _shown(key: str, raw: Any) -> str:
    """``raw`` as an error message may show it: never a secret, a URL without credentials or query."""
    if key in SECRET_FIELDS:
        return "<hidden>"
    if key.endswith("_url") and isinstance(raw, str):
        text = re.sub(r"//[^/@\s]*@", "//…@", raw)  # user:password@
        return repr(re.sub(r"\?.*", "?…", text, flags=re.S))  # ?access_token=…
    return repr(raw)


def _check_url(key: str, value: str, origin: str) -> None:
    """A typo here would otherwise surface as retried "transient" errors (exit 3), or a websocket
    that reconnects forever: the scheme must fit the key, and a base URL takes no query."""
    schemes = ("ws", "wss") if key in _WS_KEYS else ("http", "https")  # sim_url: its http(s) base
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = None
    problem = ""
    if parts is None or parts.scheme not in schemes or not parts.hostname or re.search(r"\s", value):
        problem = "expected a ws(s):// URL" if key in _WS_KEYS else "expected an http(s):// URL"
    elif key != "webhook_url" and (parts.query or parts.fragment or value.rstrip().endswith(("?", "#"))):
        problem = "a base URL takes no query string or fragment (lake appends paths to it)"
    if problem:
        raise ConfigError(f"setting {key!r} in {origin}: {problem}, got {_shown(key, value)}")


def _coerce(base: Settings, values: Mapping[str, Any], origin: str, level: int = 0) -> Settings:
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
                raise TypeError(f"not a string: {type(raw).__name__}")
            else:
                out[key] = str(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"setting {key!r} in {origin}: expected {kind}, got {_shown(key, raw)}"
            ) from exc
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
        if key.endswith("ws_stream_cap") and value < 0:
            raise ConfigError(
                f"setting {key!r} in {origin}: expected an int >= 0 (0: the market's), got {values[key]!r}"
            )
        if key.endswith("_url") and value:
            _check_url(key, value, origin)
    sources = {**base._sources, **dict.fromkeys(out, level)}
    return replace(base, **out, _sources=sources)


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
        settings = _coerce(settings, _flatten(doc, str(p)), str(p), _CONFIG)
    from_env = {name: env[f"LAKE_{name.upper()}"] for name in _FIELD_TYPES if env.get(f"LAKE_{name.upper()}")}
    settings = _coerce(settings, from_env, "environment", _ENV)
    return settings.with_overrides(**overrides)
