"""Which context assembler a generator gets (``generation.context_style``)."""

from __future__ import annotations

from ragserve.config import Settings
from ragserve.context.assembler import (
    CompactContextAssembler,
    ContextAssembler,
    ContextAssemblerProtocol,
    FocusedContextAssembler,
)
from ragserve.generation.base import Generator

__all__ = ["build_assembler"]


def build_assembler(settings: Settings, generator: Generator) -> ContextAssemblerProtocol:
    """'auto' is compact for the local reader (its latency is its prompt), full otherwise."""
    g = settings.generation
    style = g.context_style
    if style == "auto":
        style = "compact" if g.generator == "llama" else "full"
    common = {
        "context_window": generator.context_window,
        "history_budget": g.history_budget,
    }
    if style == "focused":
        return FocusedContextAssembler(
            generator.count_tokens,
            sentences=g.context_sentences,
            grow=g.context_grow,
            budget=g.context_budget,
            max_sources=g.context_sources,
            **common,
        )
    if style == "compact":
        return CompactContextAssembler(
            generator.count_tokens,
            budget=g.context_budget,
            max_sources=g.context_sources,
            pick_floor=g.context_pick_floor,
            **common,
        )
    return ContextAssembler(
        generator.count_tokens,
        system=g.budget_system,
        context=g.budget_context,
        query=g.budget_query,
        response=g.budget_response,
        **common,
    )
