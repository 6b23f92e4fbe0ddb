"""Local generation with a GGUF model through llama-cpp-python.

The default reader is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), assembled from its PyPI part
packages (``ragserve.runtime.models``). One llama.cpp context serves one generation at a time, so
requests queue for it; the queue is bounded and a full queue is refused at once (503 with
Retry-After) rather than piling up work no client will wait for.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ragserve.config import SettingsError, setting_default
from ragserve.context.assembler import AssembledContext
from ragserve.errors import (
    GenerationBusyError,
    GenerationError,
    GenerationTimeoutError,
    LLMUnavailableError,
    ModelNotFoundError,
)
from ragserve.generation.citations import attribute
from ragserve.generation.prompts import (
    COMPLETION_STOP,
    SYSTEM_PROMPT,
    build_completion_prompt,
    build_messages,
)
from ragserve.runtime.cancel import current_cancel
from ragserve.runtime.cpu import physical_cores
from ragserve.runtime.models import resolve_gguf_model
from ragserve.types import Message

__all__ = ["GenerationSlots", "LlamaCppGenerator", "gguf_context_length"]

log = logging.getLogger("ragserve.generation")

_END = object()
# How often a question waiting for the model looks whether its client is still there.
_POLL_S = 0.05


class _GaveUp(Exception):
    """The question left the queue before its turn: its client went away."""


class GenerationSlots:
    """One generation at a time, a bounded number waiting; the rest are refused at once."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._state = threading.Lock()
        self._waiting = 0

    def check(self) -> None:
        """Refuse now if a new question could not even queue (before a stream starts)."""
        with self._state:
            self._refuse_if_full()

    def _refuse_if_full(self) -> None:
        if self._lock.locked() and self._waiting >= self.max_waiting:
            raise GenerationBusyError(
                f"The local model is busy ({self._waiting} questions already waiting).",
                hint="Retry in a few seconds.",
            )

    @contextmanager
    def acquire(
        self, *, deadline: float | None = None, stop: threading.Event | None = None
    ) -> Iterator[None]:
        """Hold the model for one generation. A wait ends at ``deadline`` (monotonic; a typed
        timeout) or once ``stop`` is set (``_GaveUp``), giving its queue slot back at once."""
        with self._state:
            self._refuse_if_full()
            self._waiting += 1
        try:
            self._wait_turn(deadline, stop)
        finally:
            with self._state:
                self._waiting -= 1
        try:
            if stop is not None and stop.is_set():  # left while its turn came
                raise _GaveUp
            yield
        finally:
            self._lock.release()

    def _wait_turn(self, deadline: float | None, stop: threading.Event | None) -> None:
        if deadline is None and stop is None:
            self._lock.acquire()
            return
        while True:
            if stop is not None and stop.is_set():
                raise _GaveUp
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise GenerationTimeoutError(
                    "The local model was busy with other questions until this one's deadline.",
                    hint="Retry, or raise RAGSERVE_LLM_TIMEOUT_S.",
                )
            if self._lock.acquire(timeout=_POLL_S if left is None else min(_POLL_S, left)):
                return


class LlamaCppGenerator:
    name = "llama"
    quotes_sources = False

    def __init__(
        self,
        model_path: str = "builtin:qwen2.5-coder-1.5b-instruct",
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        temperature: float = 0.0,
        max_tokens: int = setting_default("llm_max_tokens"),
        chat_format: str | None = None,
        prompt_style: Literal["auto", "chat", "completion"] = "auto",
        completion_sources: int = 1,
        timeout_s: float = 60.0,
        max_waiting: int = 4,
    ) -> None:
        self.model_path = model_path
        self.context_window = n_ctx
        self.n_threads = n_threads
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.chat_format = chat_format
        self.prompt_style = prompt_style
        self.completion_sources = completion_sources
        self.timeout_s = timeout_s
        self.slots = GenerationSlots(max_waiting)
        self.system_role = True
        self._llm: Any = None
        self._prefix_tokens: int | None = None
        self._load_lock = threading.Lock()

    def warm_up(self) -> None:
        with self._load_lock:
            if self._llm is None:
                self._load()

    def _load(self) -> None:
        path = resolve_gguf_model(self.model_path)
        self._check_context_window(path)
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            # PyPI has no wheel: an install that skipped the source build lacks it.
            raise LLMUnavailableError(
                "The local GGUF backend needs llama-cpp-python, which is not installed.",
                hint="pip install llama-cpp-python==0.3.36 (builds llama.cpp, a few minutes; needs "
                "a C++ compiler and CMake), or use RAGSERVE_GENERATOR=extractive or openai.",
            ) from exc

        threads = self.n_threads or physical_cores()
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=self.context_window,
                n_threads=threads,
                n_threads_batch=threads,
                chat_format=self.chat_format,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(
                f"Could not load the GGUF model {path}: {exc}",
                hint="Check that the file is a complete GGUF model (reinstall its packages).",
            ) from exc
        template = str(llm.metadata.get("tokenizer.chat_template") or "")
        if self.prompt_style == "auto":
            # A GGUF without a chat template is a base model (Gemma 3 270M is): given a chat
            # prompt it echoes it back, so it gets a document to continue instead.
            self.prompt_style = "chat" if template or self.chat_format else "completion"
        if self.prompt_style == "chat" and not template and self.chat_format is None:
            llm.chat_format = "gemma" if "gemma" in path.name.lower() else "chatml"
            llm.chat_handler = None
        # Gemma's template has no system turn; the rules then open the user turn instead.
        self.system_role = "system" in template and "gemma" not in path.name.lower()
        if int(llm.n_ctx()) < self.context_window:  # never silently a shorter window
            raise SettingsError(
                f"llm_context_window is {self.context_window}, but llama.cpp allocated a "
                f"context of {int(llm.n_ctx())} tokens for {path.name}.",
                hint=f"Set RAGSERVE_LLM_CONTEXT_WINDOW (llm_context_window) to at most "
                f"{int(llm.n_ctx())}.",
            )
        self._llm = llm
        log.info(
            "loaded %s (n_ctx %d, %d threads, %s prompts)",
            path.name,
            self.context_window,
            threads,
            self.prompt_style,
        )
        if self.prompt_style == "chat" and self.system_role:
            self._prime_system_prefix()

    def _check_context_window(self, path: Path) -> None:
        """A context longer than the model was trained on is refused before llama.cpp
        allocates it: past it the model's answers degrade, and the KV cache of a mistyped
        window can be larger than the machine's memory."""
        trained = gguf_context_length(path)
        if trained is not None and self.context_window > trained:
            raise SettingsError(
                f"llm_context_window is {self.context_window}, but {path.name} was trained on "
                f"a context of {trained} tokens.",
                hint=f"Set RAGSERVE_LLM_CONTEXT_WINDOW (llm_context_window) to at most {trained}, "
                "or use a model with a longer context.",
            )

    def _prime_system_prefix(self) -> None:
        # llama.cpp keeps the KV cache of the last prompt and reuses its longest common prefix:
        # evaluating the fixed system turn once at start means no question pays for it again.
        started = time.perf_counter()
        seen = []
        for user in (".", ","):  # two user turns: what they share is the system turn
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ]
            self._llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
            seen.append(self._llm._input_ids.tolist())
        self._prefix_tokens = next(
            (i for i, (a, b) in enumerate(zip(*seen, strict=False)) if a != b),
            min(map(len, seen)),
        )
        log.info(
            "system prompt (%d tokens) cached in %.0f ms",
            self._prefix_tokens,
            (time.perf_counter() - started) * 1000,
        )

    def _from_system_prefix(self) -> None:
        """Forget everything in the KV cache after the system turn.

        Otherwise each question resumes from the longest prefix it shares with the previous
        one, and where the prompt's evaluation starts changes its floating-point results: the
        same question got a different greedy answer after a different question (the demo's
        timeout answer was refused after a zlib question). Only a few tokens of the user turn's
        opening are given up.
        """
        if self._prefix_tokens is not None:
            self._llm.n_tokens = min(self._llm.n_tokens, self._prefix_tokens)

    def check_capacity(self) -> None:
        self.slots.check()

    @property
    def max_in_flight(self) -> int:
        """Answers a server may admit for this reader at once: the one it reads and those
        its queue holds (``RagPipeline.admission``)."""
        return 1 + self.slots.max_waiting

    @property
    def llm(self) -> Any:
        """The loaded ``llama_cpp.Llama`` (None before ``warm_up``), for studies that read its
        logits."""
        return self._llm

    def count_tokens(self, text: str) -> int:
        if self._llm is None:
            self.warm_up()
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(
        self, query: str, context: AssembledContext, history: list[Message]
    ) -> Iterator[str]:
        if self._llm is None:
            self.warm_up()
        if self.prompt_style == "completion":
            yield from self._complete(query, context)
            return
        messages = build_messages(query, context, history, system_role=self.system_role)

        def run() -> Iterator[str]:
            self._from_system_prefix()
            for part in self._llm.create_chat_completion(
                messages=messages,
                stream=True,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            ):
                delta = part["choices"][0].get("delta", {}).get("content")
                if delta:
                    yield delta

        yield from self._produce(run)

    def _produce(self, run: Any) -> Iterator[str]:
        """Generate in a worker thread that owns the model; hand pieces over a queue.

        The model is held only while it computes: a slow client reading the stream does not
        keep other questions waiting, and an abandoned stream stops the generation.
        """
        pieces: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        cancel = current_cancel()
        deadline = time.monotonic() + self.timeout_s

        def work() -> None:
            try:
                # A question waits for the model only while its client does: it gives up at
                # its deadline or when the client leaves, and is never evaluated after that.
                with self.slots.acquire(deadline=deadline, stop=stop), _as_generation_error():
                    for piece in run():
                        if stop.is_set():
                            break
                        pieces.put(piece)
            except _GaveUp:
                pass
            except BaseException as exc:  # handed to the consumer, raised there
                pieces.put(exc)
            finally:
                pieces.put(_END)

        worker = threading.Thread(target=work, name="llama-generate", daemon=True)
        worker.start()
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    return  # the client left: nobody reads the rest
                left = deadline - time.monotonic()
                # In short waits when a client can leave, so that its leaving is seen at once.
                wait = left if cancel is None else min(left, _POLL_S)
                try:
                    item = pieces.get(timeout=max(0.0, wait))
                except queue.Empty:
                    if time.monotonic() < deadline:
                        continue
                    raise GenerationTimeoutError(
                        f"The local model did not finish within {self.timeout_s:.0f} s.",
                        hint="Retry, or raise RAGSERVE_LLM_TIMEOUT_S.",
                    ) from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _complete(self, query: str, context: AssembledContext) -> Iterator[str]:
        prompt = build_completion_prompt(query, context, self.completion_sources)

        def run() -> Iterator[str]:
            stream = self._llm.create_completion(
                prompt,
                stream=True,
                temperature=self.temperature,
                # A short phrase is all this prompt asks for; a base model left to run on
                # starts writing the next question.
                max_tokens=min(self.max_tokens, 48),
                stop=COMPLETION_STOP,
            )
            started = False
            for part in stream:
                piece = part["choices"][0].get("text") or ""
                if not started:
                    piece = piece.lstrip()  # the model often opens with a line break
                # The answer is the first line; a stop sequence of "\n" would also end it
                # when the model opens with a line break, before it has said anything.
                head, newline, _ = piece.partition("\n")
                head = head.rstrip("\r") if newline else head
                if head:
                    started = True
                    yield head
                if newline and started:
                    stream.close()
                    return

        answer: list[str] = []
        for piece in self._produce(run):
            answer.append(piece)
            yield piece
        text = "".join(answer)
        if text and "[" not in text:
            number = attribute(text, context.texts[: self.completion_sources], question=query)
            if number is not None:
                yield f" [{number}]"


@contextmanager
def _as_generation_error() -> Iterator[None]:
    try:
        yield
    except ValueError as exc:  # e.g. prompt longer than the context window
        raise GenerationError(
            f"Local generation failed: {exc}",
            hint="Lower RAGSERVE_BUDGET_CONTEXT or top_k.",
        ) from exc


_GGUF_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_context_length(path: Path) -> int | None:
    """The context length a GGUF model was trained on (``<architecture>.context_length`` in its
    metadata), read from the file's header without loading it; None when it does not say.

    GGUF v2/v3 layout: magic, version (u32), tensor count and metadata count (u64), then
    (key, type, value) triples, keys and strings prefixed by their u64 length. Hand-read on
    purpose: the ``gguf`` package's ``GGUFReader`` (0.19.0) parses every tensor entry and the
    vocabulary first (6.6 s on the 1.5B reader's file, beside another job; this walk, 0.3 s),
    which stops at the key it needs.
    """
    try:
        with path.open("rb") as fh:
            if fh.read(4) != b"GGUF" or _unpack(fh, "<I") not in (2, 3):
                return None
            _unpack(fh, "<Q")  # tensors
            arch, lengths = None, {}
            for _ in range(_unpack(fh, "<Q")):
                key = fh.read(_unpack(fh, "<Q")).decode("utf-8", "replace")
                value = _gguf_value(fh, _unpack(fh, "<I"))
                if key == "general.architecture" and isinstance(value, str):
                    arch = value
                elif key.endswith(".context_length") and isinstance(value, int):
                    lengths[key] = value
                if arch is not None and f"{arch}.context_length" in lengths:
                    return lengths[f"{arch}.context_length"]
    except (OSError, ValueError, struct.error):
        return None
    return None


def _unpack(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    raw = fh.read(size)
    if len(raw) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, raw)[0]


def _gguf_value(fh: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        return _unpack(fh, _GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return fh.read(_unpack(fh, "<Q")).decode("utf-8", "replace")
    if kind == _GGUF_ARRAY:  # skipped (the tokenizer's vocabulary): only its size is read
        item, count = _unpack(fh, "<I"), _unpack(fh, "<Q")
        if item in _GGUF_SCALARS:
            fh.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
        else:
            for _ in range(count):
                _gguf_value(fh, item)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")
