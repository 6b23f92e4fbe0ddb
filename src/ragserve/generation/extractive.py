"""An answerer with no language model: the best-supported sentences of the top sources.

For machines with no model at all, and — measured on SQuAD (see the generation issue's note) —
more accurate and far faster than a 270M-parameter LLM on this CPU. Sentences are scored by
``SentenceSupport`` (IDF-weighted overlap with the question plus a prior for the source's
relevance rank); the best one (and the runner-up when it adds coverage) is returned with its
citation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ragserve.context.assembler import AssembledContext
from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.text.support import SentenceSupport
from ragserve.types import Message

__all__ = ["ExtractiveGenerator"]


class ExtractiveGenerator:
    name = "extractive"
    quotes_sources = True
    max_in_flight = None  # no queue of its own: answers take milliseconds
    context_window = 16384

    def __init__(self, *, max_sentences: int = 2, min_overlap: float = 0.2) -> None:
        self.max_sentences = max_sentences
        self.min_overlap = min_overlap
        self.support = SentenceSupport()

    def warm_up(self) -> None:
        self.support.warm_up()

    def check_capacity(self) -> None:
        return  # no queue of its own: nothing to bound

    def count_tokens(self, text: str) -> int:
        # No model, so no tokenizer: words and punctuation are a close, slightly generous proxy.
        return len(re.findall(r"\w+|[^\w\s]", text))

    def stream(
        self, query: str, context: AssembledContext, history: list[Message]
    ) -> Iterator[str]:
        scored = self.support.rank(query, context.texts or [h.chunk.text for h in context.sources])
        if not scored or scored[0].overlap < self.min_overlap:
            yield REFUSAL_TEXT
            return
        best = scored[0]
        chosen = [best]
        covered = set(best.matched)
        for cand in scored[1:]:
            if len(chosen) >= self.max_sentences:
                break
            if cand.overlap >= 0.5 * best.overlap and cand.matched - covered:
                chosen.append(cand)
                covered |= cand.matched
        # Keep document order within a source so the sentences read naturally.
        chosen.sort(key=lambda s: (s.source, s.position))
        for i, cand in enumerate(chosen):
            yield ("" if i == 0 else " ") + f"{cand.text} [{cand.source}]"
