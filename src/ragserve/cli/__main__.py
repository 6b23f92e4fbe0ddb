"""``python -m ragserve.cli``: the same command as ``ragserve``."""

from ragserve.cli.main import app

app()
