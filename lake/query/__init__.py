"""lake.query."""
