"""Progress for long work: rich progress bars on a TTY, plain log lines otherwise.

    with Progress() as progress:
        task = progress.add("usdt_perp symbols", total=300)
        progress.advance(task, 1, info="weight 2301/2400")

On a terminal this draws bars with ETA; when stderr is not a TTY (CI, cron, pipes) it logs one line
per task at most every ``log_every`` seconds and when a task finishes, so logs stay readable.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from lake.net import hide_credentials

__all__ = ["Progress", "setup_logging"]

log = logging.getLogger("lake")


class _HideCredentials(logging.Filter):
    """No ``user:password@`` of a URL in a log line (``lake.net.hide_credentials``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = hide_credentials(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, not to the stream it was when
    logging was set up: a CLI run in-process (a notebook's, a test's) may replace stderr and close
    the old one, and every later line would then be a "Logging error" on the new one."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Plain, timestamped log lines on stderr (idempotent)."""
    root = logging.getLogger("lake")
    if any(getattr(h, "_lake", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    handler._lake = True  # type: ignore[attr-defined]
    handler.addFilter(_HideCredentials())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


@dataclass
class _Plain:
    description: str
    total: float | None
    done: float = 0.0
    info: str = ""
    last_log: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    finished: bool = False


class Progress:
    """Progress display that degrades to log lines when not on a terminal."""

    def __init__(
        self, enabled: bool | None = None, *, log_every: float = 5.0, console: Console | None = None
    ):
        self.console = console or Console(stderr=True)
        self.rich = self.console.is_terminal if enabled is None else enabled
        self.log_every = log_every
        self._rich: RichProgress | None = None
        self._plain: dict[int, _Plain] = {}

    def __enter__(self) -> Progress:
        if self.rich:
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._rich.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.__exit__(et, ev, tb)
            self._rich = None
        for task in self._plain.values():
            if not task.finished:
                self._log(task, final=True, state="done" if et is None else "stopped")

    def add(self, description: str, total: float | None = None, info: str = "") -> int:
        if self._rich is not None:
            return int(self._rich.add_task(description, total=total, info=info))
        tid = len(self._plain)
        self._plain[tid] = _Plain(description, total, info=info)
        return tid

    def advance(self, task: int, amount: float = 1.0, **fields: Any) -> None:
        self.update(task, advance=amount, **fields)

    def update(
        self,
        task: int,
        *,
        advance: float = 0.0,
        completed: float | None = None,
        total: float | None = None,
        info: str | None = None,
    ) -> None:
        if self._rich is not None:
            kwargs: dict[str, Any] = {"advance": advance}
            if completed is not None:
                kwargs["completed"] = completed
            if total is not None:
                kwargs["total"] = total
            if info is not None:
                kwargs["info"] = info
            self._rich.update(TaskID(task), **kwargs)
            return
        t = self._plain[task]
        t.done = completed if completed is not None else t.done + advance
        if total is not None:
            t.total = total
        if info is not None:
            t.info = info
        now = time.monotonic()
        done = t.total is not None and t.done >= t.total
        if done and not t.finished:
            t.finished = True
            self._log(t, final=True)
        elif now - t.last_log >= self.log_every:
            self._log(t)

    def message(self, text: str) -> None:
        """A one-off line above the bars (or a log line)."""
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            log.info(text)

    def _log(self, t: _Plain, final: bool = False, state: str = "done") -> None:
        t.last_log = time.monotonic()
        total = f"/{t.total:g}" if t.total is not None else ""
        elapsed = time.monotonic() - t.started
        extra = f" {t.info}" if t.info else ""
        state = state if final else "progress"
        log.info("%s %s: %g%s%s (%.1fs)", t.description, state, t.done, total, extra, elapsed)
