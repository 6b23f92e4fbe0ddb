"""Milliseconds per stage, for ``Answer.timings`` and the metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StageTimer"]


class StageTimer:
    """Adds each stage's wall time; a stage timed twice (a retry) counts both."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - began) * 1000
            self.timings[name] = self.timings.get(name, 0.0) + elapsed

    def mark(self, name: str) -> None:
        """Record the time since the request started (``ttft``)."""
        self.timings[name] = (time.perf_counter() - self.started) * 1000

    def done(self) -> dict[str, float]:
        self.mark("total")
        return {k: round(v, 2) for k, v in self.timings.items()}
