"""A request's "the client went away" signal, seen by the work it started in another layer.

The HTTP bridge (``ragserve.serving.api.streaming``) knows when a client leaves; the local
reader (``ragserve.generation.llama``) is where a question waits for the model. A context
variable carries the one to the other without threading an argument through every stage
between them, and without the serving layer importing a generator backend.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cancel_when", "current_cancel"]

_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "ragserve_generation_cancel", default=None
)


@contextmanager
def cancel_when(event: threading.Event) -> Iterator[None]:
    """Generations started inside give up once ``event`` is set: one still waiting for the
    model leaves the queue at once (its prompt never evaluated), and a running one stops at
    its next token. The HTTP bridge sets it when the client goes away, while the thread that
    reads the generation is blocked waiting for its first token."""
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def current_cancel() -> threading.Event | None:
    """The event of the innermost :func:`cancel_when` of this context, if any."""
    return _CANCEL.get()
