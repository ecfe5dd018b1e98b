"""``python -m wikitune.cli``."""

from wikitune.cli import app

app()
