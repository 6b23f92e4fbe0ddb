"""Local generation with a GGUF model through llama-cpp-python (default: Gemma 3 270M)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from ragserve.context import AssembledContext
from ragserve.errors import GenerationError, LLMUnavailableError, ModelNotFoundError
from ragserve.generation.citations import attribute
from ragserve.generation.prompts import COMPLETION_STOP, build_completion_prompt, build_messages
from ragserve.models import resolve_gguf_model
from ragserve.types import Message

__all__ = ["LlamaCppGenerator"]

log = logging.getLogger("ragserve.generation")


class LlamaCppGenerator:
    name = "llama"

    def __init__(
        self,
        model_path: str = "builtin:gemma-3-270m",
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
        chat_format: str | None = None,
        prompt_style: Literal["auto", "chat", "completion"] = "auto",
        completion_sources: int = 1,
    ) -> None:
        self.model_path = model_path
        self.context_window = n_ctx
        self.n_threads = n_threads
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.chat_format = chat_format
        self.prompt_style = prompt_style
        self.completion_sources = completion_sources
        self._llm: Any = None
        # llama.cpp contexts are not re-entrant: one generation at a time per loaded model.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        if self._llm is not None:
            return
        path = resolve_gguf_model(self.model_path)
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            # An extra: PyPI has no wheel, so the default install skips the source build.
            raise LLMUnavailableError(
                "The local GGUF backend needs llama-cpp-python, which is not installed.",
                hint="pip install 'ragserve[llama]' (builds llama.cpp, a few minutes; needs a C++ "
                "compiler and CMake), or use RAGSERVE_GENERATOR=extractive or openai.",
            ) from exc

        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=self.context_window,
                n_threads=self.n_threads,
                chat_format=self.chat_format,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(
                f"Could not load the GGUF model {path}: {exc}",
                hint="Check that the file is a valid GGUF model.",
            ) from exc
        has_template = bool(llm.metadata.get("tokenizer.chat_template"))
        if self.prompt_style == "auto":
            # A GGUF without a chat template is a base model (the shipped Gemma 3 270M is):
            # given a chat prompt it echoes it back, so it gets a document to continue instead.
            self.prompt_style = "chat" if has_template or self.chat_format else "completion"
        if self.prompt_style == "chat" and not has_template and self.chat_format is None:
            llm.chat_format = "gemma" if "gemma" in path.name.lower() else "chatml"
            llm.chat_handler = None
        self._llm = llm
        self.context_window = min(self.context_window, int(llm.n_ctx()))
        log.info(
            "loaded %s (n_ctx %d, %s prompts)", path.name, self.context_window, self.prompt_style
        )

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
        messages = build_messages(query, context, history, system_role=False)
        with self._lock, _as_generation_error():
            for part in self._llm.create_chat_completion(
                messages=messages,
                stream=True,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
            ):
                delta = part["choices"][0].get("delta", {}).get("content")
                if delta:
                    yield delta

    def _complete(self, query: str, context: AssembledContext) -> Iterator[str]:
        prompt = build_completion_prompt(query, context, self.completion_sources)
        answer: list[str] = []
        with self._lock, _as_generation_error():
            stream = self._llm.create_completion(
                prompt,
                stream=True,
                temperature=self.temperature,
                # A short phrase is all this prompt asks for; a base model left to run on
                # starts writing the next question.
                max_tokens=min(self.max_tokens, 48),
                stop=COMPLETION_STOP,
            )
            for part in stream:
                piece = part["choices"][0].get("text") or ""
                if not answer:
                    piece = piece.lstrip()  # the model often opens with a line break
                # The answer is the first line; a stop sequence of "\n" would also end it
                # when the model opens with a line break, before it has said anything.
                head, newline, _ = piece.partition("\n")
                head = head.rstrip("\r") if newline else head
                if head:
                    answer.append(head)
                    yield head
                if newline and answer:
                    stream.close()
                    break
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
