"""One exception tree for the whole toolkit.

Every error the library raises on purpose is a ``LakeError``. The CLI turns it into one line and a
non-zero exit code; anything else is a bug and keeps its traceback.

    LakeError
    ├── TerminalError                 retrying cannot help
    │   ├── ConfigError               bad settings file / env / flag combination
    │   ├── ValidationError           bad user input: interval, trade type, symbol, dates
    │   ├── DataError                 malformed rows, corrupt zip, checksum mismatch, rows outside a day
    │   ├── NotFoundError             unknown symbol, missing table, no such file upstream
    │   └── IncompleteError           a run ended with ranges still missing (lists them)
    └── TransientError                may succeed later: the caller may retry with backoff
        ├── RateLimitedError          HTTP 429 (carries retry_after)
        ├── BannedError               HTTP 418 (carries retry_after)
        ├── UpstreamError             5xx, timeouts, dropped connections
        └── LockTimeoutError          a partition lock was not acquired in time
"""

from __future__ import annotations

__all__ = [
    "BannedError",
    "ConfigError",
    "DataError",
    "IncompleteError",
    "LakeError",
    "LockTimeoutError",
    "NotFoundError",
    "RateLimitedError",
    "TerminalError",
    "TransientError",
    "UpstreamError",
    "ValidationError",
]


class LakeError(Exception):
    """Base of every error raised on purpose by lake."""

    exit_code = 1


class TerminalError(LakeError):
    """Retrying the same operation will not help."""


class TransientError(LakeError):
    """The operation may succeed if retried later."""

    exit_code = 3


class ConfigError(TerminalError):
    """Settings are invalid (config file, environment variable or flag)."""

    exit_code = 2


class ValidationError(TerminalError):
    """User input is invalid: interval, trade type, symbol, date range."""

    exit_code = 2


class DataError(TerminalError):
    """Input data is malformed: bad rows, corrupt archive, checksum mismatch."""

    exit_code = 4


class UnreadableJsonError(DataError, ValueError):
    """A JSON state file in the lake is not valid JSON (also a ``ValueError`` for older callers)."""


class NotFoundError(TerminalError):
    """Something named by the user or expected upstream does not exist."""

    exit_code = 2


class IncompleteError(TerminalError):
    """A run finished with data still missing; ``missing`` lists what."""

    exit_code = 5

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


class RateLimitedError(TransientError):
    """HTTP 429: a rate limit was hit; wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BannedError(TransientError):
    """HTTP 418: the IP is banned until ``retry_after`` seconds from now."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamError(TransientError):
    """The exchange (or simulator) failed: 5xx, timeout, dropped connection."""


class StoreUnreachableError(UpstreamError):
    """The lake's own object store (not an exchange endpoint) cannot be reached."""


class LockTimeoutError(TransientError):
    """A partition lock could not be acquired in time."""
