"""Test-wide isolation: no developer config, env or cache leaks into a test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolate_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for key in list(os.environ):
        if key.startswith("LAKE_"):
            monkeypatch.delenv(key)
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # A lake.toml in the working directory of whoever runs the tests must not apply.
    monkeypatch.setenv("LAKE_CONFIG", os.devnull)
