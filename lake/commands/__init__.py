"""CLI command modules; each exposes ``register(app)`` and is listed in ``lake.cli.COMMAND_MODULES``."""
