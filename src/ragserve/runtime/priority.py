"""Interactive requests before background indexing, on a CPU both compete for.

Three parts, each used by the server (``ragserve.serving.api``) and inert elsewhere:

* :class:`ForegroundGate` counts answers and searches in flight. Ingestion asks it, before
  each small embedding batch, to wait (for a bounded time) until none is, so an upload's
  embedding fills the gaps between questions instead of doubling their latency. The wait is
  bounded so ingestion always makes progress, however busy chat is.
* :func:`lower_thread_priority` gives the calling thread a higher nice value. Linux schedules
  threads, not processes, so this lowers only that thread, and the OpenMP workers PyTorch
  starts for it inherit the value (libgomp keeps one worker team per calling thread).
* :class:`BackgroundWorker` is one such lowered thread with a bounded queue: uploads and
  deletes run there instead of in the worker pool chat answers use, so an answer never waits
  behind an upload for a pool slot, and the pool's threads are never left lowered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import anyio

__all__ = ["BackgroundWorker", "ForegroundGate", "lower_thread_priority"]

log = logging.getLogger("ragserve.runtime.priority")

P = ParamSpec("P")
T = TypeVar("T")


class ForegroundGate:
    """How many foreground (interactive) calls are in flight, and a way to wait for none."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Counts the block as foreground work; the count drops even if the block raises."""
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                if self._active == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no foreground call is in flight or ``timeout`` seconds pass (then go
        ahead anyway: background work must progress). True if it found the gate idle."""
        if timeout <= 0:
            return self._active == 0
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)


def lower_thread_priority(nice: int) -> bool:
    """Add ``nice`` to the calling thread's nice value (Linux: per thread), up to 19. False
    where the platform or permissions do not allow it; the work then runs at the caller's
    priority. Relative, so a server already started under ``nice`` is never raised."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("could not lower the background thread's priority: %s", exc)
        return False
    return True


class BackgroundWorker:
    """One thread at nice ``nice`` that runs submitted calls in order; at most ``max_queued``
    may wait, and callers past that wait (asynchronously) for room instead of piling up."""

    def __init__(self, *, nice: int = 0, max_queued: int = 16, name: str = "background") -> None:
        self.nice = nice
        self.name = name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Waiting callers hold an event-loop task, not a thread nor a queued closure.
        self._room = anyio.CapacityLimiter(max_queued)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the background thread; the event loop stays free."""
        async with self._room:
            return await asyncio.wrap_future(self._executor().submit(fn, *args, **kwargs))

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        # Made on first use (from the event loop's one thread), so an app can start again
        # after a shutdown, as test clients do.
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"ragserve-{self.name}",
                initializer=lower_thread_priority,
                initargs=(self.nice,),
            )
        return self._pool

    def shutdown(self) -> None:
        """Let the running call finish (an index write must not be cut short), drop queued
        ones, and stop the thread."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
