"""What every ``ragserve`` sub-command shares: friendly errors and logging.

``ragserve.cli.main`` and the sub-apps that live beside the code they drive
(``ragserve.cli.evaluate``, ``ragserve.stores.migrate``) import from here, so the layers point
one way: the top-level CLI depends on its sub-apps, never the reverse.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ragserve.errors import RagServeError

__all__ = ["configure_cli_logging", "friendly_errors"]

F = TypeVar("F", bound=Callable[..., Any])

_NOISY_LOGGERS = ("httpx", "chromadb", "sentence_transformers", "transformers", "bm25s")


def friendly_errors(func: F) -> F:
    """Typed errors become a message and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RagServeError as exc:
            typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
            if exc.hint:
                typer.echo(f"hint: {exc.hint}", err=True)
            # 2: the input or the settings are wrong; 1: the machine or a service failed.
            raise typer.Exit(2 if exc.status_code < 500 else 1) from None

    return wrapper  # type: ignore[return-value]


def configure_cli_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency; be safe anyway
        pass
