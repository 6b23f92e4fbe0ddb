"""Stage 5: generation. Three backends behind one protocol, chosen by ``settings.generation.generator``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragserve.generation.base import Generator
from ragserve.generation.citations import REFUSAL_TEXT, is_refusal, validate_citations
from ragserve.generation.extractive import ExtractiveGenerator
from ragserve.generation.llama import LlamaCppGenerator
from ragserve.generation.openai_http import OpenAICompatibleGenerator

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = [
    "REFUSAL_TEXT",
    "ExtractiveGenerator",
    "Generator",
    "LlamaCppGenerator",
    "OpenAICompatibleGenerator",
    "build_generator",
    "is_refusal",
    "validate_citations",
]


def build_generator(settings: Settings) -> Generator:
    if settings.generation.generator == "llama":
        return LlamaCppGenerator(
            settings.generation.llm_model_path,
            n_ctx=settings.generation.llm_context_window,
            n_threads=settings.generation.llm_threads,
            temperature=settings.generation.llm_temperature,
            max_tokens=settings.generation.llm_max_tokens,
            prompt_style=settings.generation.llm_prompt_style,
            completion_sources=settings.generation.llm_completion_sources,
            timeout_s=settings.generation.llm_timeout_s,
            max_waiting=settings.generation.llm_max_waiting,
        )
    if settings.generation.generator == "openai":
        return OpenAICompatibleGenerator(
            settings.generation.openai_base_url,
            settings.generation.openai_model,
            settings.generation.openai_api_key,
            timeout_s=settings.generation.llm_timeout_s,
            context_window=settings.generation.llm_context_window,
            temperature=settings.generation.llm_temperature,
            max_tokens=settings.generation.llm_max_tokens,
        )
    return ExtractiveGenerator()
