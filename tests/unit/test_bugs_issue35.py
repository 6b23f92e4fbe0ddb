"""The bugs issue 35 found by reading (2, 4, 5, 7, 8, 9), each pinned by a test that failed on
the code before its fix. Pure logic and small fakes at the model boundary: the fast tier."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ragserve.config import Settings
from ragserve.errors import GenerationTimeoutError
from ragserve.generation.citations import REFUSAL_TEXT, is_refusal
from ragserve.generation.llama import LlamaCppGenerator

# --- bug 2: a queued request whose client left or timed out ---------------------------------


def _hold_the_model(gen: LlamaCppGenerator) -> tuple[threading.Event, threading.Thread]:
    """A generation that holds the model until the returned event is set."""
    release, entered = threading.Event(), threading.Event()

    def hold() -> None:
        with gen.slots.acquire():
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert entered.wait(5)
    return release, holder


def _wait_for(condition: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


class _Prompt:
    """The model boundary: ``run()`` is where llama.cpp would evaluate the prompt."""

    def __init__(self) -> None:
        self.evaluated = threading.Event()

    def __call__(self) -> Iterator[str]:
        self.evaluated.set()
        yield "answer"


def test_a_queued_request_past_its_deadline_leaves_the_queue_at_once_and_never_runs() -> None:
    gen = LlamaCppGenerator(timeout_s=0.3, max_waiting=1)
    release, holder = _hold_the_model(gen)
    prompt = _Prompt()
    with pytest.raises(GenerationTimeoutError):
        list(gen._produce(prompt))
    # Its place in the queue is given back at once, so a live question is not refused...
    assert _wait_for(lambda: gen.slots._waiting == 0, within=0.5), "still holds its queue slot"
    gen.slots.check()  # no GenerationBusyError: the queue has room again
    # ...and once the model is free, the abandoned question is not evaluated.
    release.set()
    holder.join(5)
    time.sleep(0.2)
    assert not prompt.evaluated.is_set(), "evaluated a prompt nobody waits for"


def test_a_queued_request_whose_client_left_gives_up_its_place_at_once() -> None:
    from ragserve.runtime.cancel import cancel_when

    gen = LlamaCppGenerator(timeout_s=30, max_waiting=1)
    release, holder = _hold_the_model(gen)
    prompt = _Prompt()
    client_gone = threading.Event()
    finished = threading.Event()

    def client() -> None:
        with cancel_when(client_gone):
            list(gen._produce(prompt))
        finished.set()

    threading.Thread(target=client, daemon=True).start()
    assert _wait_for(lambda: gen.slots._waiting == 1)
    client_gone.set()
    assert finished.wait(1.0), "the stream did not end when its client left"
    assert _wait_for(lambda: gen.slots._waiting == 0, within=0.5)
    release.set()
    holder.join(5)
    time.sleep(0.2)
    assert not prompt.evaluated.is_set()


def test_a_client_leaving_the_event_stream_releases_its_queued_generation() -> None:
    """Through the HTTP bridge: the client goes away while its question waits for the model."""
    from ragserve.pipeline import StreamEvent
    from ragserve.serving.api.streaming import pipeline_events

    gen = LlamaCppGenerator(timeout_s=5, max_waiting=1)
    release, holder = _hold_the_model(gen)
    prompt = _Prompt()

    class _Pipeline:
        def stream(self, query: str, history: Any) -> Iterator[StreamEvent]:
            for piece in gen._produce(prompt):
                yield StreamEvent("token", text=piece)

    async def main() -> float:
        events = pipeline_events(_Pipeline(), "q", [], anyio.CapacityLimiter(1))  # type: ignore[arg-type]
        waiting = asyncio.ensure_future(events.__anext__())
        while gen.slots._waiting < 1:
            await asyncio.sleep(0.01)
        left = time.monotonic()
        waiting.cancel()  # the client disconnects: its request task is cancelled
        with pytest.raises((asyncio.CancelledError, StopAsyncIteration)):
            await waiting
        return time.monotonic() - left

    try:
        took = anyio.run(main)
        assert took < 1.0, f"the bridge waited {took:.1f} s for a question nobody reads"
        assert _wait_for(lambda: gen.slots._waiting == 0, within=0.5)
    finally:
        release.set()
        holder.join(5)
    time.sleep(0.2)
    assert not prompt.evaluated.is_set()


# --- bug 4: one stemmer per thread, for every tokenizer -------------------------------------


class _OneCallerAtATime:
    """A stand-in for PyStemmer's ``Stemmer`` that enforces its documented contract: an
    instance must never be called from two threads at once."""

    made = 0

    def __init__(self, language: str) -> None:
        self._inside = threading.Lock()
        type(self).made += 1

    def stemWords(self, words: list[str]) -> list[str]:  # PyStemmer's names
        if not self._inside.acquire(blocking=False):
            raise AssertionError("one Stemmer called from two threads at once")
        try:
            time.sleep(0.001)  # a wide window, so an overlap is seen whenever it can happen
            return [w.rstrip("s") for w in words]
        finally:
            self._inside.release()

    def stemWord(self, word: str) -> str:
        return self.stemWords([word])[0]


def _from_threads(fn: Any, n: int = 6) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run() -> None:
        start.wait()
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_sentence_support_never_shares_a_stemmer_between_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import Stemmer

    from ragserve.text.support import SentenceSupport

    monkeypatch.setattr(Stemmer, "Stemmer", _OneCallerAtATime)
    support = SentenceSupport()  # one scorer, as the pipeline shares it across requests
    texts = ["Timeouts default to five seconds in clients.", "HTTP/2 needs the h2 packages."]

    def ask() -> None:
        for _ in range(15):
            assert support.rank("What are the default timeouts?", texts)

    assert _from_threads(ask) == []


def test_bm25_and_sentence_support_use_one_per_thread_stemmer() -> None:
    from ragserve.stores.bm25 import Bm25Tokenizer
    from ragserve.text import stemming
    from ragserve.text.support import SentenceSupport

    tokenizer = Bm25Tokenizer()
    support = SentenceSupport()
    support.warm_up()
    assert tokenizer._stemmer() is stemming.stemmer()
    assert not hasattr(support, "_stemmer"), "the scorer keeps no stemmer of its own"
    other: list[Any] = []
    t = threading.Thread(target=lambda: other.append(tokenizer._stemmer()))
    t.start()
    t.join()
    assert other[0] is not stemming.stemmer(), "each thread has its own"


def test_stemming_from_many_threads_matches_one_thread() -> None:
    """The real PyStemmer, through both tokenizers at once."""
    from ragserve.stores.bm25 import Bm25Tokenizer
    from ragserve.text.support import SentenceSupport

    tokenizer, support = Bm25Tokenizer(), SentenceSupport()
    texts = [
        "Connections are retried by the transports, generously and repeatedly.",
        "Organizations nationalized their relational databases universally.",
    ] * 20
    want_bm25 = tokenizer.tokenize(texts)
    want_terms = [support.terms(t) for t in texts]

    def check() -> None:
        for _ in range(10):
            assert tokenizer.tokenize(texts) == want_bm25
            assert [support.terms(t) for t in texts] == want_terms

    assert _from_threads(check) == []


# --- bug 5: BM25 saves that cannot remove each other's files; one rebuild at a time ---------


def _snapshot(version: int) -> Any:
    from ragserve.stores.bm25 import BM25Index

    index = BM25Index()
    ids = [f"c{i}" for i in range(40)]
    texts = [f"zebra number {i} runs across the savanna {version}" for i in range(40)]
    return index, index.prepare(ids, texts, version)


def test_two_writers_saving_bm25_at_once_never_break_each_others_save(tmp_path: Path) -> None:
    """Two BM25Index objects over one directory, as a CLI ingest and a server have."""
    directory = tmp_path / "bm25"
    errors: list[BaseException] = []
    rounds = 15

    def writer(offset: int) -> None:
        try:
            for i in range(rounds):
                index, snap = _snapshot(2 * i + offset)
                index.save(directory, snap)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [], errors
    from ragserve.stores.bm25 import BM25Index

    newest = 2 * (rounds - 1) + 2
    assert BM25Index().load(directory, newest), "the newest save is the one on disk"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "bm25")
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_a_save_older_than_the_one_on_disk_leaves_it_in_place(tmp_path: Path) -> None:
    from ragserve.stores.bm25 import BM25Index

    directory = tmp_path / "bm25"
    newer_index, newer = _snapshot(7)
    newer_index.save(directory, newer)
    older_index, older = _snapshot(3)  # another process, behind this one
    older_index.save(directory, older)
    assert BM25Index().load(directory, 7)


def test_concurrent_stale_searches_start_one_bm25_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragserve.stores.local import LocalIndex

    index = LocalIndex(tmp_path, "c")
    started = []
    release = threading.Event()

    def slow_rebuild(**_: Any) -> None:
        started.append(threading.current_thread().name)
        release.wait(5)  # a rebuild that has not yet reached its lock when others look

    monkeypatch.setattr(index, "_refresh_bm25", slow_rebuild)
    assert _from_threads(index._refresh_bm25_in_background, n=8) == []
    time.sleep(0.2)
    assert len(started) == 1, f"{len(started)} rebuild threads for one stale index"
    release.set()
    assert _wait_for(
        lambda: not any(t.name == "ragserve-bm25-refresh" for t in threading.enumerate())
    )
    index._refresh_bm25_in_background()  # the next stale search may start the next one
    assert _wait_for(lambda: len(started) == 2)


# --- bug 7: settings a component cannot honour; the OpenAI backend's answer length -----------


def _gguf(path: Path, context_length: int, arch: str = "llama") -> Path:
    """A GGUF v3 file holding only the metadata that says how long a context it was trained on."""

    def text(s: str) -> bytes:
        raw = s.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = text("general.architecture") + struct.pack("<I", 8) + text(arch)
    body += text(f"{arch}.context_length") + struct.pack("<II", 4, context_length)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + body)
    return path


def test_the_local_models_context_window_is_the_configured_one_not_capped() -> None:
    from ragserve.generation import build_generator

    gen = build_generator(Settings(generator="llama", llm_context_window=16384))
    assert gen.context_window == 16384


def test_a_context_window_longer_than_the_model_was_trained_for_is_an_error_naming_it(
    tmp_path: Path,
) -> None:
    from ragserve.config import SettingsError

    model = _gguf(tmp_path / "tiny.gguf", context_length=2048)
    gen = LlamaCppGenerator(str(model), n_ctx=4096)
    with pytest.raises(SettingsError) as err:
        gen.warm_up()
    message = f"{err.value} {err.value.hint}"
    assert "llm_context_window" in message and "RAGSERVE_LLM_CONTEXT_WINDOW" in message
    assert "2048" in message and "4096" in message


def test_the_gguf_context_length_is_read_from_its_metadata(tmp_path: Path) -> None:
    from ragserve.generation.llama import gguf_context_length

    assert gguf_context_length(_gguf(tmp_path / "a.gguf", 32768, arch="qwen2")) == 32768
    (tmp_path / "b.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    assert gguf_context_length(tmp_path / "b.gguf") is None


def test_the_openai_backend_writes_at_most_llm_max_tokens() -> None:
    from ragserve.generation import build_generator

    gen = build_generator(Settings(generator="openai", llm_max_tokens=77, budget_response=2000))
    assert gen.max_tokens == 77  # type: ignore[attr-defined]


# --- bug 8: what counts as a refusal ---------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        REFUSAL_TEXT,
        "I don't know.",
        "I don't know",
        "I do not know.",
        "I don’t know.",
        "The sources do not say.",
        "The provided sources do not contain information about llamas.",
        "The documents don't mention the Eiffel Tower's architect.",
        "Sorry, I couldn't find that in the documents.",
        "There is no information about the architect in the provided sources.",
        "Not mentioned in the provided context.",
        "I don't know. The sources do not say who designed it.",
    ],
)
def test_a_reply_that_is_a_refusal_is_one(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "There is no information about X in the 2010 census, but the 2000 census lists "
        "1,234 people.",
        "The tower is 330 metres tall; the sources have no information about its weight.",
        "Set timeout=5.0 on the client. The documents do not mention a default for pools.",
        "Retries are configured on the transport: httpx.HTTPTransport(retries=1). There is no "
        "information about backoff, so retries happen at once.",
        "I don't know the exact figure, but the report lists 1,234 residents.",
        "Timeouts default to five seconds [1].",
        "The documents do not contain information about llamas [1].",
    ],
)
def test_an_answer_that_mentions_missing_information_is_not_a_refusal(answer: str) -> None:
    assert not is_refusal(answer)


# --- bug 9: uploads off the event loop; a rate limiter from `limits` --------------------------


def test_an_upload_is_written_off_the_event_loop(tmp_path: Path) -> None:
    """The staged file is a FIFO whose reader is slow: a write on the loop would stall it."""
    from starlette.datastructures import UploadFile

    from ragserve.serving.api.routes.documents import _copy_within

    dest = tmp_path / "staged.txt"
    os.mkfifo(dest)
    payload = b"x" * (2 << 20)
    received = bytearray()

    def slow_disk() -> None:
        time.sleep(0.6)
        with dest.open("rb") as fh:
            while chunk := fh.read(1 << 16):
                received.extend(chunk)
                time.sleep(0.02)  # 64 KiB per 20 ms: a 1 MiB write takes 0.3 s

    reader = threading.Thread(target=slow_disk, daemon=True)
    reader.start()

    async def main() -> tuple[bool, float]:
        gaps: list[float] = []
        done = anyio.Event()

        async def ticker(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            last = time.monotonic()
            task_status.started()
            while not done.is_set():
                await anyio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async with anyio.create_task_group() as tg:
            await tg.start(ticker)  # ticking before the upload begins
            upload = UploadFile(io.BytesIO(payload), filename="a.txt")
            ok = await _copy_within(upload, dest, limit=10 << 20)
            done.set()
        return ok, max(gaps)

    ok, worst = anyio.run(main)
    reader.join(10)
    assert ok and bytes(received) == payload
    assert worst < 0.3, f"the event loop stalled {worst:.2f} s on an upload's writes"


def test_two_limiters_sharing_one_storage_enforce_one_limit() -> None:
    from limits.storage import MemoryStorage

    from ragserve.serving.api.security import RateLimitedError, RateLimiter

    shared = MemoryStorage()  # what two processes share through redis://
    first, second = RateLimiter(3, storage=shared), RateLimiter(3, storage=shared)
    first.check("10.0.0.7")
    second.check("10.0.0.7")
    first.check("10.0.0.7")
    with pytest.raises(RateLimitedError) as err:
        second.check("10.0.0.7")
    assert 1 <= err.value.retry_after <= 60
    first.check("10.0.0.8")  # per client, still


def test_an_unusable_rate_limit_storage_is_an_error_at_start_naming_the_setting() -> None:
    from ragserve.config import SettingsError
    from ragserve.serving.api.security import RateLimiter

    with pytest.raises(SettingsError) as err:
        RateLimiter(10, storage="nosuchscheme://127.0.0.1")
    assert "rate_limit_storage" in str(err.value) + str(err.value.hint)
    assert Settings().api.rate_limit_storage == "memory://"


# --- cachetools: the embedder's query cache ----------------------------------------------------


def _embedder(cache_size: int) -> Any:
    import numpy as np

    from ragserve.embedding.embedder import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder(cache_size=cache_size)
    e.computed = []
    e.embed = lambda texts: (e.computed.extend(texts), np.ones((len(texts), 4)))[1]
    return e


def test_the_query_cache_keeps_the_most_recently_used_queries() -> None:
    e = _embedder(cache_size=2)
    for q in ["a", "b", "a", "c", "a", "b"]:
        e.embed_query(q)
    # "a" was used again before "c" came, so "b" was the least recent one to go.
    assert e.computed == ["a", "b", "c", "b"]
    assert (e.cache_hits, e.cache_misses) == (2, 4)


def test_a_zero_sized_query_cache_caches_nothing() -> None:
    e = _embedder(cache_size=0)
    for q in ["a", "a"]:
        e.embed_query(q)
    assert e.computed == ["a", "a"]
