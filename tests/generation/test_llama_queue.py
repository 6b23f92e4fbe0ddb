"""The local model's queue and timeout, on a stand-in for the model's token stream.

The model itself is exercised in test_llm_backends.py; what is checked here is the pure
mechanism: one generation at a time, a bounded wait, a deadline, and no lock held while a
slow consumer reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ragserve.errors import GenerationBusyError, GenerationTimeoutError
from ragserve.generation.llama import GenerationSlots, LlamaCppGenerator
from ragserve.runtime.cpu import physical_cores


def _tokens(n: int, delay: float = 0.0) -> Iterator[str]:
    for i in range(n):
        time.sleep(delay)
        yield f"t{i} "


def test_pieces_arrive_in_order_through_the_worker() -> None:
    gen = LlamaCppGenerator(timeout_s=5)
    assert list(gen._produce(lambda: _tokens(5))) == [f"t{i} " for i in range(5)]


def test_a_generation_past_its_deadline_is_a_typed_timeout_mid_stream() -> None:
    gen = LlamaCppGenerator(timeout_s=0.3)
    got: list[str] = []
    with pytest.raises(GenerationTimeoutError, match="did not finish within"):
        for piece in gen._produce(lambda: _tokens(100, delay=0.05)):
            got.append(piece)
    assert got, "tokens before the deadline were streamed"
    # The abandoned generation releases the model for the next question.
    assert list(gen._produce(lambda: _tokens(2))) == ["t0 ", "t1 "]


def test_errors_inside_the_model_reach_the_caller() -> None:
    def broken() -> Iterator[str]:
        yield "a"
        raise ValueError("prompt longer than the context window")

    gen = LlamaCppGenerator(timeout_s=5)
    with pytest.raises(Exception, match="context window"):
        list(gen._produce(broken))


def test_a_full_queue_is_refused_at_once_not_piled_up() -> None:
    slots = GenerationSlots(max_waiting=1)
    release = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        with slots.acquire():
            entered.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)

    def wait_turn() -> None:
        with slots.acquire():
            pass

    waiter = threading.Thread(target=wait_turn)
    waiter.start()
    deadline = time.monotonic() + 5
    while slots._waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(GenerationBusyError) as err, slots.acquire():
        pass
    assert time.monotonic() - started < 0.5 and err.value.status_code == 503
    assert err.value.retry_after > 0
    release.set()
    holder.join(5)
    waiter.join(5)


def test_a_slow_reader_does_not_hold_the_model() -> None:
    gen = LlamaCppGenerator(timeout_s=10, max_waiting=4)
    first = gen._produce(lambda: _tokens(3))
    assert next(first) == "t0 "  # the first client stops reading here, mid-answer
    time.sleep(0.2)
    # The first generation has finished into its queue, so a second question runs now.
    assert list(gen._produce(lambda: _tokens(2))) == ["t0 ", "t1 "]
    assert list(first) == ["t1 ", "t2 "]


def test_thread_count_defaults_to_physical_cores() -> None:
    assert 1 <= physical_cores() <= (__import__("os").cpu_count() or 1)
