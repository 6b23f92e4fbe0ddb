"""Local generation with a GGUF model through llama-cpp-python (default: Gemma 3 270M)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from ragserve.context import AssembledContext
from ragserve.errors import GenerationError, ModelNotFoundError
from ragserve.generation.prompts import build_messages
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
    ) -> None:
        self.model_path = model_path
        self.context_window = n_ctx
        self.n_threads = n_threads
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.chat_format = chat_format
        self._llm: Any = None
        # llama.cpp contexts are not re-entrant: one generation at a time per loaded model.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        if self._llm is not None:
            return
        path = resolve_gguf_model(self.model_path)
        from llama_cpp import Llama

        fmt = self.chat_format
        if fmt is None and "gemma" in path.name.lower():
            fmt = "gemma"  # the shipped GGUF carries no chat template
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=self.context_window,
                n_threads=self.n_threads,
                chat_format=fmt,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(
                f"Could not load the GGUF model {path}: {exc}",
                hint="Check that the file is a valid GGUF model.",
            ) from exc
        self.context_window = min(self.context_window, int(self._llm.n_ctx()))
        log.info("loaded %s (n_ctx %d, chat_format %s)", path.name, self.context_window, fmt)

    def count_tokens(self, text: str) -> int:
        if self._llm is None:
            self.warm_up()
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(
        self, query: str, context: AssembledContext, history: list[Message]
    ) -> Iterator[str]:
        if self._llm is None:
            self.warm_up()
        messages = build_messages(query, context, history, system_role=False)
        with self._lock:
            try:
                for part in self._llm.create_chat_completion(
                    messages=messages,
                    stream=True,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                ):
                    delta = part["choices"][0].get("delta", {}).get("content")
                    if delta:
                        yield delta
            except ValueError as exc:  # e.g. prompt longer than the context window
                raise GenerationError(
                    f"Local generation failed: {exc}",
                    hint="Lower RAGSERVE_BUDGET_CONTEXT or top_k.",
                ) from exc
