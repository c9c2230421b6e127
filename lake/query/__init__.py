"""DuckDB views of the lake (the SQL lives in ``sql/``): ``connect(root)``."""

from lake.query.connect import VIEWS, connect, register_views

__all__ = ["VIEWS", "connect", "register_views"]
