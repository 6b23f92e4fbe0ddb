"""Stage 5: generation. Three backends behind one protocol, chosen by ``settings.generator``."""

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
    if settings.generator == "llama":
        return LlamaCppGenerator(
            settings.llm_model_path,
            n_ctx=min(settings.llm_context_window, 8192),
            n_threads=settings.llm_threads,
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
            prompt_style=settings.llm_prompt_style,
            completion_sources=settings.llm_completion_sources,
            timeout_s=settings.llm_timeout_s,
            max_waiting=settings.llm_max_waiting,
        )
    if settings.generator == "openai":
        return OpenAICompatibleGenerator(
            settings.openai_base_url,
            settings.openai_model,
            settings.openai_api_key,
            timeout_s=settings.llm_timeout_s,
            context_window=settings.llm_context_window,
            temperature=settings.llm_temperature,
            max_tokens=settings.budget_response,
        )
    return ExtractiveGenerator()
