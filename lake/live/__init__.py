"""lake.live."""
