"""The generation contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from ragserve.context.assembler import AssembledContext
from ragserve.types import Message

__all__ = ["Generator"]


@runtime_checkable
class Generator(Protocol):
    """Writes an answer from the assembled sources, as a stream of text pieces."""

    name: str
    context_window: int

    def warm_up(self) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, query: str, context: AssembledContext, history: list[Message]
    ) -> Iterator[str]: ...
