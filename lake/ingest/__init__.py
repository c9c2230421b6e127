"""lake.ingest."""
