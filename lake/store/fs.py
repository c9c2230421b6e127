"""The lake's file system: a root (local path or fsspec URL), atomic writes and series locks.

Writes are atomic in one helper: on a local disk the bytes go to a hidden temp file in the target
directory, are fsynced, then ``os.replace``d over the target (readers see the old file or the new
one, never half of one). A parquet file that replaces another is written *relocated* over it: the
old pages stay at their offsets, so a query that read the old footer and opens the file again
reads the old version whole (``lake.store.relocate``); a file that cannot be relocated is swapped
under file leases instead, which spares most such queries (``lake.store.swap``). On object stores (``s3://``) a
single PUT is already all-or-nothing, so the object is written in one request.

Locks serialise writers of one series across threads and processes of one machine with ``flock``
on a local lock file. Object stores give no cross-machine lock, so a lake on an object store has
one writing machine at a time: the first write of a process takes a *writer lease*
(``_meta/writer-lease.json``: host id and expiry, renewed while writing) and a process on another
host refuses to write while a live lease is held by someone else. Readers are unaffected.
Configure S3 access with the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` …),
which s3fs, Polars and DuckDB all read.

s3fs caches listings and never expires them, so a long-running process (``lake live``, a
notebook) would not see what another process wrote: ``listdir``, ``exists`` and ``mtime_key`` drop
the cached entries of their path first, and ``lake.connect`` drops the whole cache when it binds
the views. (Turning the cache off instead makes DuckDB's reads over many files several times
slower: each file opened lists its directory again.) Store
failures are translated at this boundary: a missing bucket or refused credentials are a
``ConfigError`` (exit 2), an unreachable endpoint an ``UpstreamError`` (exit 3), each naming the
root and never a credential.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import importlib
import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from lake.errors import ConfigError, LakeError, LockTimeoutError, StoreUnreachableError
from lake.store import relocate
from lake.store.schema_files import schema_bytes, schema_file, table_of
from lake.store.swap import replace_many, replace_parquet

__all__ = ["LEASE_PATH", "LakeFS", "Payload", "host_id", "write_file_atomic"]

_log = logging.getLogger(__name__)


def write_file_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Have ``write(tmp)`` write a temporary file beside ``path`` (a local file outside the lake: a
    command's output, a saved download), then move it over ``path``: a reader of the old file, or a
    run that fails halfway, never sees a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# A file's new content: bytes, or a view of an encoder's buffer, written as it is (copying a large
# table's files into bytes first costs a second copy, into freshly allocated pages).
Payload = bytes | memoryview

_SCHEMAS_MADE: set[tuple[str, str]] = set()  # (root, table) whose schema file exists
_schemas_lock = threading.Lock()


def _load_syncfs() -> Any:
    """``syncfs(2)`` from libc (Linux), or ``None`` where it is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def _syncfs(path: str) -> None:
    """Flush every dirty page of the file system holding ``path`` (one call for a batch of files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _create(tmp: str, directory: str) -> int:
    """Create the new file ``tmp`` for writing; its directory is made only when it is missing (a
    rewrite of an existing partition costs no ``mkdir``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        return os.open(tmp, flags, 0o666)


@dataclass(frozen=True)
class _Staged:
    """How a parquet file was written to its temp file: ``plain`` when a plain rename cannot tear a
    read (a new file, or one relocated over the old one), else it needs the lease swap; ``dead``:
    the old pages it carries, ``stat``: its stat if relocated (``lake.store.relocate``)."""

    plain: bool
    dead: tuple[tuple[int, int], ...]
    stat: os.stat_result | None


def _stage_parquet(fd: int, target: str, data: Payload) -> _Staged:
    """Write the parquet ``data`` meant to replace ``target`` into the temp file ``fd``: relocated
    over the existing file when it can be, so that no reader of the old file tears."""
    view = memoryview(data).cast("B")
    if not relocate.enabled():
        _write_all(fd, view)
        return _Staged(False, (), None)
    try:
        old = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        _write_all(fd, view)
        return _Staged(True, (), None)  # no old file, no reader of it
    try:
        layout = relocate.plan(old, view)
        if layout is None:
            _write_all(fd, view)
            return _Staged(False, (), None)
        relocate.write(fd, old, view, layout)
        st = os.fstat(fd)
        before = os.fstat(old)
        if before.st_mtime_ns - 1_000_000_000 < st.st_mtime_ns <= before.st_mtime_ns:
            # The size is kept by design and a coarse clock can give the same tick (or, after an
            # earlier bump, an older one): mtimes of successive versions must increase, so the
            # change token (LakeFS.mtime_key) moves even when an inode number comes back. An old
            # mtime more than a second ahead (a clock stepped back) is not carried forward.
            os.utime(fd, ns=(st.st_atime_ns, before.st_mtime_ns + 1))
            st = os.fstat(fd)
    finally:
        os.close(old)
    return _Staged(True, layout.dead, st)


def _write_all(fd: int, data: Payload) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _botocore_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(missing-credentials errors, other client errors) of botocore, which s3fs lets through
    untranslated; empty when botocore is not installed."""
    try:
        exc = importlib.import_module("botocore.exceptions")
    except ImportError:
        return (), ()
    return (exc.NoCredentialsError, exc.PartialCredentialsError), (exc.BotoCoreError,)


_NO_CREDENTIALS, _CLIENT_ERRORS = _botocore_errors()
_UNREACHABLE: tuple[type[Exception], ...] = (*_CLIENT_ERRORS, OSError)


LEASE_PATH = "_meta/writer-lease.json"
LEASE_SECONDS = 600.0


def host_id() -> str:
    """Identifies this machine for the object-store writer lease (``LAKE_HOST_ID`` overrides)."""
    override = os.environ.get("LAKE_HOST_ID")
    if override:
        return override
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            machine = f.read().strip()
    except OSError:
        machine = ""
    return f"{socket.gethostname()}:{machine[:12]}"


# Object stores both Polars and DuckDB (through the fsspec file system lake registers) can read; S3
# is the one tested (against a real S3 endpoint process), the others go through the same code.
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


class LakeFS:
    """A lake root. Paths passed to its methods are relative to the root and use ``/``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        lock_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        root_s = os.fspath(root)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        if "://" in root_s and not root_s.startswith("file://"):
            scheme = root_s.split("://", 1)[0].lower()
            if scheme not in OBJECT_STORE_SCHEMES:
                # fsspec opens many more (memory://, ftp://), but the readers — Polars and DuckDB —
                # would then fail mid-run with a traceback, after a writer had filled the root
                raise ConfigError(
                    f"lake root {root_s!r}: {scheme}:// is not supported; use a local path or an "
                    f"object store URL ({', '.join(f'{s}://' for s in OBJECT_STORE_SCHEMES)})"
                )
            self.fs, path = fsspec.core.url_to_fs(root_s, **self.storage_options)
            self.protocol = root_s.split("://", 1)[0]
            self.root = path.rstrip("/")
            self.is_local = False
            default_locks = (
                Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                / "lake"
                / "locks"
                / hashlib.sha256(root_s.encode()).hexdigest()[:16]
            )
        else:
            self.fs = fsspec.filesystem("file")
            self.protocol = "file"
            self.root = str(Path(root_s.removeprefix("file://")).resolve())
            self.is_local = True
            default_locks = Path(self.root) / ".locks"
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_locks
        self.url_root = self.root if self.is_local else f"{self.protocol}://{self.root}"
        self._lease_until = 0.0
        self._lease_mutex = threading.Lock()
        self._bucket_seen = self.is_local

    def __repr__(self) -> str:
        return f"LakeFS({self.url_root!r})"

    # -- paths ---------------------------------------------------------------------------------
    def full(self, rel: str) -> str:
        """Path of ``rel`` in the underlying file system (no protocol)."""
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str) -> str:
        """Path or URL of ``rel`` as Polars and DuckDB want it (protocol kept for object stores)."""
        rel = rel.strip("/")
        return f"{self.url_root}/{rel}" if rel else self.url_root

    # -- reading -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if self.is_local:
            return os.path.exists(self.full(rel))
        with self._store_errors():
            self.fs.invalidate_cache(self.full(rel))
            found = bool(self.fs.exists(self.full(rel)))
            if not found:
                self._check_bucket()
            return found

    def read_bytes(self, rel: str) -> bytes:
        if self.is_local:
            with open(self.full(rel), "rb") as f:
                return f.read()
        with self._store_errors():
            return bytes(self.fs.cat_file(self.full(rel)))

    def read_bytes_or_none(self, rel: str) -> bytes | None:
        try:
            return self.read_bytes(rel)
        except FileNotFoundError:
            return None

    def listdir(self, rel: str) -> list[str]:
        """Names of the entries directly under ``rel`` (empty if it does not exist)."""
        if self.is_local:
            try:
                return sorted(e.name for e in os.scandir(self.full(rel)))
            except (FileNotFoundError, NotADirectoryError):  # a stray file where a directory goes
                return []
        with self._store_errors():
            try:
                self.fs.invalidate_cache(self.full(rel))
                entries = self.fs.ls(self.full(rel), detail=False)
            except FileNotFoundError:
                self._check_bucket()
                return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def mtime_key(self, rel: str) -> str | None:
        """A cheap change token for a file (mtime, size and inode locally, ETag/mtime on object
        stores). The inode: a relocated rewrite keeps the file's size (``lake.store.relocate``),
        and two writes within one tick of a coarse clock can share an mtime."""
        try:
            if self.is_local:
                st = os.stat(self.full(rel))
                return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"
            with self._store_errors():
                self.fs.invalidate_cache(self.full(rel))
                info = self.fs.info(self.full(rel))
        except FileNotFoundError:
            return None
        return str(info.get("ETag") or info.get("LastModified") or info.get("mtime")) + f":{info.get('size')}"

    # -- writing -------------------------------------------------------------------------------
    def retire_parquet(self, rel: str, data: bytes, empty: bytes) -> None:
        """Make the parquet file ``rel``, whose bytes are ``data``, read as zero rows without
        deleting it, so that a query that listed the file and opens it later finds it, and one
        that read the old footer finds the old pages at their offsets (``lake.store.tail``).
        ``empty``: a zero-row parquet file of the same schema. Locally it is written relocated over
        the file (``lake.store.relocate``: the old pages stay, the size stays, the dead pages are
        punched out later); else ``data`` followed by the footer of ``empty`` replaces it, which
        cannot tear a read either and needs no lease."""
        if not (self.is_local and relocate.enabled() and self._write_local(rel, empty, relocated_only=True)):
            self.write_atomic(rel, data + empty[4:], guard=False)

    def write_atomic(self, rel: str, data: Payload, *, guard: bool = True) -> None:
        """Replace ``rel`` with ``data`` so that no reader ever sees a partial file. A parquet file
        is relocated over the one it replaces (``lake.store.relocate``) or, if it cannot be, swapped
        under leases (``lake.store.swap``); ``guard=False`` writes it plainly, for replacements
        that cannot tear a read (see ``retire_parquet``)."""
        self._schema_first(rel, data)
        if not self.is_local:
            with self._store_errors():
                self._ensure_lease()
                self.fs.pipe_file(self.full(rel), bytes(data))
            return
        self._write_local(rel, data, guard=guard)

    def _write_local(
        self, rel: str, data: Payload, *, guard: bool = True, relocated_only: bool = False
    ) -> bool:
        """``write_atomic`` on a local disk; with ``relocated_only`` nothing is written unless the
        file can be relocated over the existing one (returns whether it was written)."""
        target = self.full(rel)
        directory, name = os.path.split(target)
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        staged: _Staged | None = None
        try:
            fd = _create(tmp, directory)
            try:
                if guard and target.endswith(".parquet"):
                    staged = _stage_parquet(fd, target, data)
                else:
                    _write_all(fd, data)
                if relocated_only and (staged is None or staged.stat is None):
                    os.unlink(tmp)
                    return False
                os.fsync(fd)
            finally:
                os.close(fd)
            if staged is not None and not staged.plain:
                replace_parquet(tmp, target)  # readers may be between their two opens of it
            else:
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if staged is not None:
            self._punch_later(rel, staged)
        return True

    def write_atomic_many(self, items: Sequence[tuple[str, Payload]]) -> None:
        """Replace several files, each atomically, paying for durability once per batch.

        Locally every temp file is written first, the file system is synced once, then the files
        are renamed into place and the renames synced once more: per file the guarantee is that of
        ``write_atomic`` (old or new, never partial), at two syncs per batch instead of two per file.
        """
        if len(items) <= 1 or not self.is_local or _SYNCFS is None:
            for rel, data in items:
                self.write_atomic(rel, data)
            return
        for rel, data in items:
            self._schema_first(rel, data)
        staged: list[tuple[str, str, _Staged | None]] = []
        try:
            tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            for i, (rel, data) in enumerate(items):
                target = self.full(rel)
                directory, name = os.path.split(target)
                tmp = os.path.join(directory, f".{name}.tmp-{tag}-{i}")
                fd = _create(tmp, directory)
                staged.append((tmp, target, None))
                try:
                    if target.endswith(".parquet"):
                        staged[-1] = (tmp, target, _stage_parquet(fd, target, data))
                    else:
                        _write_all(fd, data)
                finally:
                    os.close(fd)
            _syncfs(staged[0][0])
            for tmp, target, how in staged:
                if how is None or how.plain:
                    os.replace(tmp, target)
            replace_many([(tmp, target) for tmp, target, how in staged if how is not None and not how.plain])
            _syncfs(staged[0][1])
        except BaseException:
            for tmp, _, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise
        for (rel, _), (_, _, how) in zip(items, staged, strict=True):
            if how is not None:
                self._punch_later(rel, how)

    def _punch_later(self, rel: str, staged: _Staged) -> None:
        """Queue the punching out of a relocated file's dead pages (``lake.store.relocate``). The
        file is written by now: a failure here costs disk space only, so it is logged, not raised."""
        try:
            relocate.load_pending(self.root)
            relocate.schedule(self.root, rel.strip("/"), staged.stat, staged.dead)
        except Exception as exc:
            _log.warning("dead pages of %s stay on disk until it is rewritten: %s", rel, exc)

    def create_once(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` unless it exists (it is never replaced); True if created."""
        target = self.full(rel)
        if not self.is_local:
            with self._store_errors():
                if self.fs.exists(target):
                    return False
                self._ensure_lease()
                self.fs.pipe_file(target, bytes(data))
            return True
        directory, name = os.path.split(target)
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        fd = _create(tmp, directory)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, target)  # unlike rename, fails if another process created it first
            except FileExistsError:
                return False
            except OSError:  # no hard links here (FAT, some FUSE mounts): check, then rename
                if os.path.exists(target):
                    return False
                os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def ensure_schema_file(self, table: str, data: Payload) -> None:
        """Create ``table``'s schema file (``lake.store.schema_files``) from the parquet file
        ``data`` of that table, if it does not exist yet."""
        key = (self.url_root, table)
        if key in _SCHEMAS_MADE:
            return
        with _schemas_lock:
            if key in _SCHEMAS_MADE:
                return
            rel = schema_file(table)
            if not self.exists(rel):
                try:
                    made = schema_bytes(data)
                except (ValueError, OSError):  # not parquet (pyarrow's errors are ValueErrors)
                    return  # the next parquet file of the table makes it
                self.create_once(rel, made)
            _SCHEMAS_MADE.add(key)

    def _schema_first(self, rel: str, data: Payload) -> None:
        table = table_of(rel)
        if table is not None:
            self.ensure_schema_file(table, data)

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.is_local:
                os.unlink(self.full(rel))
            else:
                with self._store_errors():
                    self._ensure_lease()
                    self.fs.rm_file(self.full(rel))

    @contextlib.contextmanager
    def _store_errors(self) -> Iterator[None]:
        """Translate object-store failures into lake errors naming the root (see module doc);
        a plain missing object stays a ``FileNotFoundError``."""
        try:
            yield
        except LakeError:
            raise
        except FileNotFoundError as exc:
            self._check_bucket(exc)
            raise
        except PermissionError as exc:
            raise ConfigError(
                f"lake root {self.url_root}: access denied by the object store ({exc}); check the "
                "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the storage options)"
            ) from exc
        except _NO_CREDENTIALS as exc:
            raise ConfigError(f"lake root {self.url_root}: {exc}") from exc
        except _UNREACHABLE as exc:
            raise StoreUnreachableError(
                f"lake root {self.url_root}: cannot reach the object store: {exc}"
            ) from exc

    def _check_bucket(self, cause: BaseException | None = None) -> None:
        """Raise ``ConfigError`` if the root's bucket does not exist (checked until seen once)."""
        if self._bucket_seen:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            exists = bool(self.fs.exists(bucket))
        except FileNotFoundError:
            exists = False
        if not exists:
            raise ConfigError(f"lake root {self.url_root}: bucket {bucket!r} does not exist") from cause
        self._bucket_seen = True

    def _ensure_lease(self) -> None:
        """Refuse to write an object-store lake that another machine is writing (see module doc)."""
        now = time.time()
        if now < self._lease_until - LEASE_SECONDS / 2:
            return
        with self._lease_mutex:
            me = host_id()
            raw = self.read_bytes_or_none(LEASE_PATH)
            if raw is not None:
                try:
                    lease = json.loads(raw)
                    holder, expires = str(lease["host"]), float(lease["expires"])
                except (ValueError, KeyError, TypeError):
                    holder, expires = "", 0.0
                if holder and holder != me and expires > now:
                    raise ConfigError(
                        f"lake {self.url_root} is being written by host {holder!r} until "
                        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))}; object stores give no "
                        "cross-machine lock, so only one machine may write a lake at a time"
                    )
            until = now + LEASE_SECONDS
            body = json.dumps({"host": me, "expires": until}).encode()
            self.fs.pipe_file(self.full(LEASE_PATH), body)
            self._lease_until = until

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 120.0) -> Iterator[None]:
        """Hold an exclusive cross-process lock called ``name`` (a relative path-like string)."""
        path = self.lock_dir / f"{name.strip('/')}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"timed out after {timeout}s waiting for lock {name}"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
