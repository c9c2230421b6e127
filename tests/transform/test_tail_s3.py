"""The offsets tail on a real S3 endpoint: appended days, a fold, Polars and DuckDB readers."""

from __future__ import annotations

import os
import uuid

import polars as pl
import pytest

from lake.query import connect
from lake.store.fs import LakeFS
from lake.store.klines import write_klines
from lake.transform.build import build_offsets, scan_offsets
from lake.transform.tail import list_files
from tests.transform.helpers import assert_bins_equal
from tests.transform.test_build import _day, _expected

KEY = ["symbol", "offset", "candle_begin_time"]


@pytest.fixture
def s3_root(s3_endpoint: str) -> str:
    return f"s3://lake-test/offsets-{uuid.uuid4().hex[:12]}"


def test_tail_on_s3(s3_root: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert os.environ["AWS_ENDPOINT_URL"]
    local = tmp_path_factory.mktemp("truth")  # the same klines on disk give the expected bins
    for root in (s3_root, str(local)):
        for d in range(3):
            write_klines(root, "usdt_perp", "5m", "AUSDT", _day(d, d))
    build_offsets(s3_root, "usdt_perp", "1h")
    for d in (3, 4):
        for root in (s3_root, str(local)):
            write_klines(root, "usdt_perp", "5m", "AUSDT", _day(d, d))
        assert build_offsets(s3_root, "usdt_perp", "1h").written == 1
    assert list_files(LakeFS(s3_root), "usdt_perp", "1h")
    want = _expected(local, ["AUSDT"])

    def check() -> None:
        assert_bins_equal(scan_offsets(s3_root, "usdt_perp", "1h").collect().sort(KEY), want)
        con = connect(s3_root)
        try:
            view = con.sql('SELECT * EXCLUDE (trade_type, "interval") FROM offsets').pl()
        finally:
            con.close()
        view = view.with_columns(
            pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
        )
        assert_bins_equal(view.sort(KEY), want)

    check()
    r = build_offsets(s3_root, "usdt_perp", "1h", fold=True, tail_grace_s=0)
    assert r.folded == 1
    check()
    build_offsets(s3_root, "usdt_perp", "1h", tail_grace_s=0)  # the markers go once the layers are gone
    assert list_files(LakeFS(s3_root), "usdt_perp", "1h") == []
    check()
