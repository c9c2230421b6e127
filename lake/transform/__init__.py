"""lake.transform."""
