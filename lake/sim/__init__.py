"""lake.sim."""
