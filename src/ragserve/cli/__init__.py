"""The ``ragserve`` command (Typer). The top layer: it may import anything, nothing imports it."""
