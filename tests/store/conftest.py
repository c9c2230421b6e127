"""Storage contract fixtures: every test taking ``lake_root`` runs on a local disk and on real S3."""

from __future__ import annotations

import os
import uuid

import fsspec
import pytest

from tests.s3 import S3_ENV


@pytest.fixture(params=["local", "s3"])
def lake_root(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "lake")
    url = request.getfixturevalue("s3_endpoint")
    for k, v in S3_ENV.items():
        os.environ.setdefault(k, v)
    os.environ["AWS_ENDPOINT_URL"] = url
    return f"s3://lake-test/{uuid.uuid4().hex[:12]}"


def parquet_files(root: str) -> list[str]:
    """The lake's data files (not the views' schema files under ``_meta/``)."""
    fs, path = fsspec.core.url_to_fs(root)
    try:
        return sorted(p for p in fs.find(path) if p.endswith(".parquet") and "/_meta/" not in p)
    except FileNotFoundError:
        return []
