"""The generation contract."""

from __future__ import annotations

from collections.abc import Generator as TextStream
from typing import Protocol, runtime_checkable

from ragserve.context.assembler import AssembledContext
from ragserve.types import Message

__all__ = ["Generator"]


@runtime_checkable
class Generator(Protocol):
    """Writes an answer from the assembled sources, as a stream of text pieces."""

    name: str
    context_window: int
    quotes_sources: bool
    """Its answers are source sentences verbatim (extractive): grounding has nothing to check."""
    max_in_flight: int | None
    """Answers a server may admit for it at once (the one it writes and those its queue
    holds); None when it has no queue of its own to bound."""

    def warm_up(self) -> None: ...

    def check_capacity(self) -> None:
        """Raise ``GenerationBusyError`` now if a new request would only queue past the bound
        (a 503 before a stream opens, rather than an error event after it has)."""

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, query: str, context: AssembledContext, history: list[Message]
    ) -> TextStream[str, None, None]:
        """The answer's pieces as the model writes them; closing it stops the model."""
        ...
