"""lake.store."""
