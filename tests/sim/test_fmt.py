"""The vectorized formatter writes exactly what the plain-Python one does (and what parses back exactly)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.binance.intervals import parse_interval
from lake.sim import SimMarket, npfmt
from lake.sim.candles import Candles
from lake.sim.fmt import csv_bytes, dec_str, json_block, json_row
from lake.sim.testing import test_config

VALUES = st.lists(st.integers(min_value=0, max_value=2**53 - 1), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(VALUES, st.integers(min_value=0, max_value=8), st.booleans())
def test_dec_matches_python(values: list[int], d: int, spot: bool) -> None:
    pad = 8 if spot else d
    x = np.array(values, dtype=np.int64)
    blob, off = npfmt.join_rows([*npfmt.dec(x, d, pad), ";"], len(x))
    texts = [blob[off[i] : off[i + 1]].decode() for i in range(len(x))]
    assert texts == [dec_str(v, d, pad) + ";" for v in values]
    assert [float(t[:-1]) for t in texts] == (x / 10.0**d).tolist()


def test_blocks_match_row_formatter() -> None:
    m = SimMarket(test_config())
    for market, sym in (("spot", "ETHBTC"), ("um", "DOGEUSDT"), ("cm", "BTCUSD_PERP")):
        info = m.info(market, sym)
        for name in ("1m", "1h"):
            iv = parse_interval(name)
            c = Candles.concat([m.day_candles(info, iv, 20150 + k) for k in range(2)])
            for micro in (False, True):
                blk = json_block(info, iv, c, micro=micro)
                assert blk.blob == b"".join(json_row(info, iv, c, i, micro=micro) for i in range(len(c)))
            lines = csv_bytes(info, iv, c, micro=False, header=False).decode().splitlines()
            fields = json_row(info, iv, c, 0).decode()[1:-2].replace('"', "").split(",")
            assert lines[0].split(",") == [*fields[:11], "0"]  # the archive's "ignore" stays 0
            assert (fields[11] == fields[7]) == (market == "um")  # REST USDⓈ-M: non-zero
