"""Quantclass data API: client, file format, and the comparison with the lake's offsets (``lake compare``)."""

from lake.quantclass.client import LatestFiles, QuantclassClient
from lake.quantclass.compare import CompareResult, compare_quantclass, compare_with_reference

__all__ = ["CompareResult", "LatestFiles", "QuantclassClient", "compare_quantclass", "compare_with_reference"]
