"""The bridge from the pipeline's blocking token generator to an async event stream."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from ragserve.pipeline import RagPipeline, StreamEvent
from ragserve.runtime.cancel import cancel_when
from ragserve.types import Message

__all__ = ["pipeline_events"]


async def pipeline_events(
    pipeline: RagPipeline,
    query: str,
    history: list[Message],
    cpu_pool: anyio.CapacityLimiter,
) -> AsyncIterator[StreamEvent]:
    """Run the blocking generator in the CPU pool; hand events to the loop as they come.

    When the consumer stops early (the client went away), the producer stops at its next
    token instead of generating an answer nobody reads.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def produce() -> None:
        gen: Iterator[StreamEvent] = pipeline.stream(query, history)
        try:
            # cancel_when: a question still queued for the local model when the client
            # leaves gives up its place at once, instead of blocking this thread until then.
            with cancel_when(stop):
                for ev in gen:
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
                    if stop.is_set():
                        break
        except BaseException as exc:  # forwarded to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            with contextlib.suppress(Exception):
                gen.close()  # type: ignore[attr-defined]
            loop.call_soon_threadsafe(queue.put_nowait, done)

    task = asyncio.ensure_future(anyio.to_thread.run_sync(produce, limiter=cpu_pool))
    try:
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
