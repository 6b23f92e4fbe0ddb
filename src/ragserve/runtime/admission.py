"""How many answers may be in flight at once, counted where a request arrives.

The reader's own queue (``GenerationSlots``) counts only questions that reached it, and a
question first waits for a thread of the CPU pool (``api.workers``, 2): with six clients
asking, four waited there, unseen, for most of a minute, and the queue bound never fired
(issue 37). Counting at the door, before that wait, makes the bound true for every face:
beyond it a request is refused at once, with Retry-After, instead of joining a queue no
client will wait out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ragserve.errors import GenerationBusyError

__all__ = ["AnswerAdmission"]


class AnswerAdmission:
    """At most ``limit`` answers admitted at once (one being read plus those waiting); no
    bound when ``limit`` is None (a reader with no queue of its own: extractive, a remote
    server)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> Callable[[], None]:
        """Admit one answer, or raise ``GenerationBusyError`` now. Returns its release, which
        may be called more than once (a stream's end and its cleanup both call it)."""
        with self._lock:
            if self.limit is not None and self._in_flight >= self.limit:
                raise GenerationBusyError(
                    f"ragserve is answering {self._in_flight} questions already, the most it "
                    "queues.",
                    hint="Retry in a few seconds.",
                )
            self._in_flight += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._in_flight -= 1

        return release
