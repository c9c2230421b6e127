"""lake: a local analytical data lake of Binance klines."""

__version__ = "0.1.0"
