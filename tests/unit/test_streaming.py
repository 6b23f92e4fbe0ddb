"""The bridge from the pipeline's blocking generator to the event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from ragserve.errors import GenerationError
from ragserve.pipeline import StreamEvent
from ragserve.serving.api.streaming import pipeline_events


class _Counting:
    def __init__(self, tokens: int, fail_at: int | None = None) -> None:
        self.tokens, self.fail_at = tokens, fail_at
        self.produced = 0
        self.threads: set[int] = set()

    def stream(self, query: str, history: Any) -> Iterator[StreamEvent]:
        for i in range(self.tokens):
            self.threads.add(threading.get_ident())
            if i == self.fail_at:
                raise GenerationError("the model stopped")
            self.produced += 1
            time.sleep(0.001)  # a model's pace, so an early stop is visible
            yield StreamEvent("token", text=str(i))


def _collect(pipeline: Any, take: int | None = None) -> list[str]:
    async def main() -> list[str]:
        got: list[str] = []
        events = pipeline_events(pipeline, "q", [], anyio.CapacityLimiter(1))
        async for ev in events:
            got.append(ev.text)
            if take is not None and len(got) == take:
                break
        await events.aclose()
        return got

    return anyio.run(main)


def test_events_arrive_in_order_from_a_worker_thread() -> None:
    fake = _Counting(5)
    assert _collect(fake) == ["0", "1", "2", "3", "4"]
    assert threading.get_ident() not in fake.threads


def test_a_consumer_that_leaves_stops_the_producer() -> None:
    fake = _Counting(10_000)
    assert _collect(fake, take=3) == ["0", "1", "2"]
    assert fake.produced < 1000, "the producer stops at its next token"


def test_a_producer_error_reaches_the_consumer() -> None:
    with pytest.raises(GenerationError, match="stopped"):
        _collect(_Counting(5, fail_at=2))
