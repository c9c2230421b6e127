"""The ``lake`` command line: thin Typer commands over the library.

Each command lives in a module of ``lake.commands`` (listed in ``COMMAND_MODULES``) that parses its
flags, calls the library and renders the result. Errors the library raises on purpose
(``LakeError``) become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import signal
import sys

import typer

from lake.errors import ConfigError, DataError, LakeError, TransientError
from lake.net import hide_credentials
from lake.progress import setup_logging

__all__ = ["app", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "lake.commands.status",
    "lake.commands.audit",
    "lake.commands.backfill",
    "lake.commands.live",
    "lake.commands.compact",
    "lake.commands.sim",
    "lake.commands.demo",
    "lake.commands.offsets",
    "lake.commands.sql",
    "lake.commands.compare",
)

app = typer.Typer(
    name="lake",
    help="A local analytical data lake of Binance klines: backfill, archive ingest, live append, "
    "all-offset resampling and DuckDB views.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_registered = False
# click's error classes, as typer raises them: recent typer releases vendor click, older ones use it
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """A local analytical data lake of Binance klines."""
    if version:
        from lake import __version__

        typer.echo(f"lake {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _register() -> None:
    global _registered
    if _registered:
        return
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    _registered = True


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lake`` console script."""
    setup_logging()
    _register()
    try:
        # standalone_mode=False: click's usage errors come back to us and are printed as one line
        # like every other error, not as typer's boxed panel (scripts grep stderr).
        rv = app(args=argv, prog_name="lake", standalone_mode=False)
    except _CLICK_ERROR as exc:
        message = exc.format_message()  # type: ignore[attr-defined]
        if message:  # (none: a group run without a command, whose help was printed)
            ctx = getattr(exc, "ctx", None) if isinstance(exc, _USAGE_ERROR) else None
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"lake: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:  # Ctrl-C while click was parsing or prompting
        typer.echo("lake: interrupted", err=True)
        sys.exit(130)
    except LakeError as exc:
        typer.echo(f"lake: error: {hide_credentials(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except PermissionError as exc:  # e.g. a lake root or output file the user may not write
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"lake: error: permission denied{where}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("lake: interrupted", err=True)
        sys.exit(130)
    except Exception as raised:
        # a task group (backfill's markets, live's feeds) wraps the error that stopped it
        err = _first_known(raised)
        if _is_broken_pipe(err):
            # the reader of our output went away (`lake sql … | head`): stop quietly, as a tool
            # killed by SIGPIPE would, and keep Python's exit-time flush from complaining again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
        if isinstance(err, LakeError):
            typer.echo(f"lake: error: {hide_credentials(str(err))}", err=True)
            sys.exit(err.exit_code)
        if _is_system_error(err):
            # The system refused (a port in use, a root that cannot be created, a full disk): one
            # line, 2 as for a bad setting, 3 for a connection that failed (transient trouble).
            text = re.sub(r"^\[Errno [^]]*\] ", "", str(err))
            typer.echo(f"lake: error: {hide_credentials(text)}", err=True)
            network = isinstance(err, ConnectionError | TimeoutError) or type(err).__module__.startswith(
                "aiohttp"
            )
            sys.exit(TransientError.exit_code if network else ConfigError.exit_code)
        if not _is_read_error(err):
            raise
        # A damaged or foreign file in the lake (truncated parquet, another table's schema) surfaced
        # from Polars, pyarrow or DuckDB: one line and the bad-data exit code, not a traceback.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        typer.echo(
            f"lake: error: a file in the lake cannot be read as klines ({type(err).__name__}: {first}); "
            "'lake audit' names the partition files it cannot read",
            err=True,
        )
        sys.exit(DataError.exit_code)
    # Without standalone mode an exit code (typer.Exit, or 130 for Ctrl-C) is returned, not raised;
    # every command returns None.
    if isinstance(rv, int) and rv:
        if rv == 130:
            typer.echo("lake: interrupted", err=True)
        sys.exit(rv)


def _first_known(exc: BaseException) -> BaseException:
    """``exc``, or for an exception group the first error in it that is lake's, the system's or a
    reader's (else the group itself, re-raised as a bug)."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    for sub in exc.exceptions:
        found = _first_known(sub)
        if isinstance(found, LakeError) or _is_system_error(found) or _is_read_error(found):
            return found
    return exc


def _is_broken_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` says our stdout's reader closed it (Polars' writers raise a bare ``OSError``
    naming os error 32)."""
    if isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
        return True
    return isinstance(exc, OSError) and "Broken pipe (os error 32)" in str(exc)


def _is_system_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system's refusal (an ``OSError`` with an errno)."""
    return isinstance(exc, OSError) and exc.errno is not None


def _is_read_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a reader's complaint about file contents (not a bug in lake)."""
    # (DuckDB's exceptions live in its extension module, ``_duckdb``)
    mods = {c.__module__.split(".")[0].lstrip("_") for c in type(exc).__mro__}
    if "polars" in mods:
        import polars as pl

        return isinstance(exc, (pl.exceptions.ComputeError, pl.exceptions.SchemaError))
    if "pyarrow" in mods:
        import pyarrow as pa

        return isinstance(exc, pa.ArrowInvalid)
    if "duckdb" in mods:
        import duckdb

        return isinstance(exc, (duckdb.IOException, duckdb.InvalidInputException, duckdb.BinderException))
    return False


_register()

if __name__ == "__main__":
    main()
