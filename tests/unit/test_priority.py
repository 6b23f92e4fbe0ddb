"""Foreground before background: the gate, the lowered writer thread, and ingestion yielding."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.ingest.pipeline import Ingestor
from ragserve.runtime.priority import BackgroundWorker, ForegroundGate, lower_thread_priority


def test_an_idle_gate_does_not_wait() -> None:
    gate = ForegroundGate()
    started = time.monotonic()
    assert gate.wait_idle(5.0)
    assert time.monotonic() - started < 0.5


def test_a_busy_gate_waits_at_most_the_timeout() -> None:
    gate = ForegroundGate()
    with gate.foreground():
        started = time.monotonic()
        assert not gate.wait_idle(0.2)
        assert 0.15 < time.monotonic() - started < 2.0
        assert not gate.wait_idle(0)  # no timeout: only a look


def test_the_waiter_wakes_when_the_last_foreground_call_leaves() -> None:
    gate = ForegroundGate()
    entered, release = threading.Event(), threading.Event()

    def query() -> None:
        with gate.foreground(), gate.foreground():  # nested: one call inside another
            entered.set()
            release.wait(5)

    t = threading.Thread(target=query)
    t.start()
    entered.wait(5)
    threading.Timer(0.1, release.set).start()
    started = time.monotonic()
    assert gate.wait_idle(10.0)
    assert time.monotonic() - started < 5.0
    t.join(5)


def test_a_query_that_raises_still_leaves_the_gate() -> None:
    gate = ForegroundGate()
    with pytest.raises(ValueError), gate.foreground():
        raise ValueError("the query failed")
    assert gate.active == 0
    assert gate.wait_idle(0.01)


def test_the_count_is_exact_under_many_threads() -> None:
    gate = ForegroundGate()

    def hammer() -> None:
        for _ in range(500):
            with gate.foreground():
                pass

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.active == 0


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux behaviour")
def test_the_background_worker_runs_on_one_lowered_thread() -> None:
    worker = BackgroundWorker(nice=5, max_queued=2, name="test")

    def where() -> tuple[int, int]:
        return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)

    async def main() -> list[tuple[int, int]]:
        results: list[tuple[int, int]] = []

        async def one() -> None:
            results.append(await worker.run(where))

        async with anyio.create_task_group() as tg:
            for _ in range(5):  # more than max_queued: the rest wait their turn
                tg.start_soon(one)
        return results

    try:
        results = anyio.run(main)
    finally:
        worker.shutdown()
    assert len({tid for tid, _ in results}) == 1
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the calling thread is untouched
    assert all(nice == min(19, base + 5) for _, nice in results), (base, results)


def test_a_worker_error_reaches_the_caller_and_the_worker_goes_on() -> None:
    worker = BackgroundWorker()

    def fail() -> None:
        raise RuntimeError("write failed")

    async def main() -> int:
        with pytest.raises(RuntimeError, match="write failed"):
            await worker.run(fail)
        return await worker.run(lambda: 7)

    try:
        assert anyio.run(main) == 7
    finally:
        worker.shutdown()


def test_nice_zero_changes_nothing() -> None:
    assert lower_thread_priority(0) is False


class _CountingEmbedder:
    model_id = "fake"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.ones((len(texts), 3), dtype=np.float32)


class _RecordingGate(ForegroundGate):
    def __init__(self, idle: bool = True) -> None:
        super().__init__()
        self.idle = idle
        self.waits: list[float] = []

    def wait_idle(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.idle


def _ingestor(tmp_path: Path, gate: ForegroundGate | None, yield_s: float) -> Ingestor:
    settings = Settings(data_dir=tmp_path, ingest_yield_seconds=yield_s)
    return Ingestor(settings, None, _CountingEmbedder(), foreground=gate)  # type: ignore[arg-type]


def test_ingestion_embeds_in_small_batches_each_after_a_wait(tmp_path: Path) -> None:
    gate = _RecordingGate(idle=False)
    ingestor = _ingestor(tmp_path, gate, 0.5)
    vectors = ingestor._embed([f"chunk {i}" for i in range(10)])
    calls = ingestor.embedder.calls  # type: ignore[attr-defined]
    assert vectors.shape == (10, 3)
    assert sum(calls) == 10 and max(calls) <= 2
    assert gate.waits == [0.5] * len(calls)


def test_with_no_answer_in_flight_ingestion_embeds_bigger_batches(tmp_path: Path) -> None:
    gate = _RecordingGate(idle=True)
    ingestor = _ingestor(tmp_path, gate, 0.5)
    assert ingestor._embed([f"chunk {i}" for i in range(40)]).shape == (40, 3)
    calls = ingestor.embedder.calls  # type: ignore[attr-defined]
    assert sum(calls) == 40 and 2 < max(calls) < 40


@pytest.mark.parametrize("with_gate", [False, True])
def test_without_a_gate_or_a_wait_ingestion_embeds_at_once(tmp_path: Path, with_gate: bool) -> None:
    gate = _RecordingGate() if with_gate else None
    ingestor = _ingestor(tmp_path, gate, 0.0 if with_gate else 1.0)
    ingestor._embed([f"chunk {i}" for i in range(10)])
    assert ingestor.embedder.calls == [10]  # type: ignore[attr-defined]
    assert gate is None or gate.waits == []


def test_a_busy_foreground_delays_ingestion_but_never_stops_it(tmp_path: Path) -> None:
    gate = ForegroundGate()
    ingestor = _ingestor(tmp_path, gate, 0.05)
    with gate.foreground():  # an answer that never ends
        started = time.monotonic()
        vectors = ingestor._embed(["a", "b", "c", "d", "e", "f"])
    assert vectors.shape == (6, 3)
    assert time.monotonic() - started >= 0.05
