"""Test-wide isolation: no developer config, env or cache leaks into a test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import fsspec
import pytest

from tests.s3 import S3_ENV, moto_server


@pytest.fixture(autouse=True)
def _isolate_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for key in list(os.environ):
        if key.startswith("LAKE_"):
            monkeypatch.delenv(key)
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # A lake.toml in the working directory of whoever runs the tests must not apply.
    monkeypatch.setenv("LAKE_CONFIG", os.devnull)


@pytest.fixture(autouse=True)
def _isolate_logging() -> Iterator[None]:
    """A test that runs the CLI in-process (``lake.cli.main``) sets up lake's log handler; later
    tests must not see its lines in their captured output (CliRunner mixes stderr into ``output``)."""
    lake_log = logging.getLogger("lake")
    saved = (list(lake_log.handlers), lake_log.level, lake_log.propagate)
    yield
    lake_log.handlers[:] = saved[0]
    lake_log.setLevel(saved[1])
    lake_log.propagate = saved[2]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One real S3 endpoint (moto server) for the session, with bucket ``lake-test``; the AWS
    variables point at it for the whole session."""
    with moto_server() as url, pytest.MonkeyPatch.context() as mp:
        for k, v in S3_ENV.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL", url)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("lake-test")
        yield url
