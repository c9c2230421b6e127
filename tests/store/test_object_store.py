"""Object stores give no cross-machine lock: a second writing host is refused, the lake untouched."""

import json
import uuid

import fsspec
import pytest

from lake.errors import ConfigError
from lake.store.fs import LEASE_PATH, LakeFS
from lake.store.klines import scan_klines, write_klines
from tests.store.helpers import frame, opens, t0_ms


def test_second_host_is_refused_while_lease_is_live(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    lake_root = f"s3://lake-test/{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("LAKE_HOST_ID", "host-a")
    write_klines(lake_root, "usdt_perp", "5m", "BTCUSDT", frame(opens(t0_ms(), 10)))
    lease = json.loads(LakeFS(lake_root).read_bytes(LEASE_PATH))
    assert lease["host"] == "host-a"
    monkeypatch.setenv("LAKE_HOST_ID", "host-b")
    with pytest.raises(ConfigError, match="being written by host 'host-a'"):
        write_klines(lake_root, "usdt_perp", "5m", "BTCUSDT", frame(opens(t0_ms(), 20), base=7.0))
    assert scan_klines(lake_root, "usdt_perp", "5m").collect().height == 10
    # An expired lease is taken over.
    fs, path = fsspec.core.url_to_fs(lake_root)
    fs.pipe_file(f"{path}/{LEASE_PATH}", json.dumps({"host": "host-a", "expires": 0}).encode())
    write_klines(lake_root, "usdt_perp", "5m", "BTCUSDT", frame(opens(t0_ms(), 20), base=7.0))
    assert scan_klines(lake_root, "usdt_perp", "5m").collect().height == 20
