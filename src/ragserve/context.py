"""Stage 4: context assembly — pack re-ranked chunks into the prompt within a token budget.

* Budget from the generator's own tokenizer. The seed's allocation for a 16K window (system
  500, context 8000, query 200, response 2000) is scaled to the model's real window.
* "Lost in the middle" (Liu et al., 2023): models attend best to the start and the end, so the
  most relevant source goes first, the second most relevant last, the rest in between.
* Sources are numbered by relevance ([Source 1] is the best), whatever their position, and each
  carries ``file, p.N`` or ``file, section`` so the model can cite it.
* A chunk that does not fit is cut at a sentence boundary, or dropped; never cut mid-sentence.
* Document text is fenced as data: instructions planted in a document are quoted, not obeyed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ragserve.ingest.chunking import split_sentences
from ragserve.types import Hit, Message

__all__ = ["AssembledContext", "CompactContextAssembler", "ContextAssembler", "source_label"]


@dataclass(slots=True)
class AssembledContext:
    sources: list[Hit]
    """Numbered 1..n in relevance order: ``[n]`` refers to ``sources[n - 1]``."""
    text: str
    tokens: int
    dropped: int = 0
    history: list[Message] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    """The (possibly sentence-trimmed) text of each source as given to the model."""


def source_label(hit: Hit, number: int) -> str:
    c = hit.chunk
    where = f", p.{c.page}" if c.page else (f", {c.section}" if c.section else "")
    return f"[Source {number}: {c.source}{where}]"


def _fence(text: str) -> str:
    # Stop a document from closing the fence early and smuggling text outside it.
    return text.replace("<<<", "‹‹‹").replace(">>>", "›››")


class ContextAssembler:
    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        context_window: int = 16384,
        system: int = 500,
        context: int = 8000,
        query: int = 200,
        response: int = 2000,
    ) -> None:
        self.count_tokens = count_tokens
        self.context_window = context_window
        scale = min(1.0, context_window / 16384)
        self.budget_system = int(system * scale)
        self.budget_query = int(query * scale)
        self.budget_response = int(response * scale)
        # Whatever the window leaves after the fixed parts, up to the configured context share.
        rest = context_window - self.budget_system - self.budget_query - self.budget_response
        self.budget_context = max(0, min(int(context * max(scale, 1.0)), rest))
        self.budget_history = max(0, rest - self.budget_context)

    def assemble(
        self, query: str, hits: Sequence[Hit], history: Sequence[Message] = ()
    ) -> AssembledContext:
        budget = self.budget_context
        chosen: list[tuple[Hit, str]] = []
        used = 0
        dropped = 0
        for number, hit in enumerate(hits, 1):
            block_overhead = self.count_tokens(source_label(hit, number)) + 4
            remaining = budget - used - block_overhead
            if remaining <= 0:
                dropped += len(hits) - number + 1
                break
            text = hit.chunk.text
            tokens = self.count_tokens(text)
            if tokens > remaining:
                text = self._trim_to_sentences(text, remaining)
                if not text:
                    dropped += 1
                    continue
                tokens = self.count_tokens(text)
            chosen.append((hit, text))
            used += tokens + block_overhead
        order = self._lost_in_the_middle_order(len(chosen))
        blocks = []
        for i in order:
            hit, text = chosen[i]
            blocks.append(f"{source_label(hit, i + 1)}\n<<<\n{_fence(text)}\n>>>")
        packed = "\n\n".join(blocks)
        return AssembledContext(
            sources=[h for h, _ in chosen],
            text=packed,
            tokens=self.count_tokens(packed),
            dropped=dropped,
            history=self.trim_history(history, self.budget_history),
            texts=[t for _, t in chosen],
        )

    @staticmethod
    def _lost_in_the_middle_order(n: int) -> list[int]:
        """Positions for relevance ranks 0..n-1: best first, second best last, and so on."""
        front: list[int] = []
        back: list[int] = []
        for rank in range(n):
            (front if rank % 2 == 0 else back).append(rank)
        return front + back[::-1]

    def _trim_to_sentences(self, text: str, limit: int) -> str:
        kept_end = 0
        for _a, b in split_sentences(text):
            if self.count_tokens(text[:b]) > limit:
                break
            kept_end = b
        return text[:kept_end].strip()

    def trim_history(self, history: Sequence[Message], budget: int) -> list[Message]:
        """The most recent turns that fit in ``budget`` tokens, oldest first."""
        kept: list[Message] = []
        used = 0
        for message in reversed(history):
            cost = self.count_tokens(message.content) + 4
            if used + cost > budget:
                break
            kept.append(message)
            used += cost
        return kept[::-1]


class CompactContextAssembler:
    """The few best sources, each cut to the sentence window around what the question asks.

    For a small local model the prompt is the latency: on a 2-core CPU a 1.5B model reads
    about 75 prompt tokens a second, so every source sentence that does not hold the answer
    costs time to first token and gives the model something else to quote. Each source keeps
    the sentence (prose or code) that best covers the question's terms and grows around it,
    next sentence first (how-to prose is usually followed by its code), until its share of the
    budget is spent: half for the best source, the rest split. (Shares that followed each
    source's match, with the best-matching source read first, lifted gold-first on the SQuAD
    sample from 0.827 to 0.837 but lost the demo page's timeout answer: the 1.5B model then
    wrote a tuple form from memory.)
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        budget: int = 240,
        max_sources: int = 3,
        context_window: int = 4096,
    ) -> None:
        from ragserve.generation.support import SentenceSupport

        self.count_tokens = count_tokens
        self.budget = budget
        self.max_sources = max_sources
        self.context_window = context_window
        self.support = SentenceSupport()
        self._history = ContextAssembler(count_tokens, context_window=context_window)

    def assemble(
        self, query: str, hits: Sequence[Hit], history: Sequence[Message] = ()
    ) -> AssembledContext:
        chosen = list(hits[: self.max_sources])
        anchors = self._anchors(query, [h.chunk.text for h in chosen])
        texts = [
            self._window(hit.chunk.text, anchor, self._share(rank, len(chosen)))
            for rank, (hit, (anchor, _)) in enumerate(zip(chosen, anchors, strict=True))
        ]
        blocks = [
            f"{source_label(hit, n)}\n<<<\n{_fence(text)}\n>>>"
            for n, (hit, text) in enumerate(zip(chosen, texts, strict=True), 1)
        ]
        packed = "\n\n".join(blocks)
        return AssembledContext(
            sources=chosen,
            text=packed,
            tokens=self.count_tokens(packed),
            dropped=max(0, len(hits) - len(chosen)),
            history=self._history.trim_history(history, self.budget),
            texts=texts,
        )

    def _share(self, rank: int, n: int) -> int:
        """Tokens for the source at ``rank``: half the budget for the best, the rest split."""
        if n == 1:
            return self.budget
        return self.budget // 2 if rank == 0 else self.budget // (2 * (n - 1))

    def _anchors(self, query: str, texts: list[str]) -> list[tuple[int, float]]:
        """For each source, its best sentence's position and the share of the question's
        IDF-weighted terms it covers (code and headings count: a how-to's answer sits there).

        Among equally good sentences the one that introduces code wins, then the earliest:
        docs name a feature in prose first ("HTTP/2 is not enabled by default") and show how
        later ("a client with HTTP/2 enabled:" + code), and the window grows from its anchor.
        """
        ranked = self.support.rank(query, texts, answers_only=False)
        code_after = {(s.source, s.position - 1) for s in ranked if s.text.startswith("```")}
        best: dict[int, tuple[float, bool, int]] = {}
        for sentence in ranked:
            key = (
                -round(sentence.overlap, 6),
                (sentence.source, sentence.position) not in code_after,
                sentence.position,
            )
            if sentence.source not in best or key < best[sentence.source]:
                best[sentence.source] = key
        return [
            (best[n][2], -best[n][0]) if n in best else (0, 0.0) for n in range(1, len(texts) + 1)
        ]

    def _window(self, text: str, anchor: int, limit: int) -> str:
        spans = split_sentences(text) or [(0, len(text))]
        anchor = min(anchor, len(spans) - 1)
        lo = hi = anchor
        used = self.count_tokens(text[spans[anchor][0] : spans[anchor][1]])
        grew = True
        while grew:
            grew = False
            for step in (hi + 1, lo - 1):
                if not 0 <= step < len(spans) or lo <= step <= hi:
                    continue
                cost = self.count_tokens(text[spans[step][0] : spans[step][1]])
                if used + cost > limit:
                    continue
                used += cost
                lo, hi = min(lo, step), max(hi, step)
                grew = True
        window = text[spans[lo][0] : spans[hi][1]].strip()
        if used > limit:  # one sentence longer than the whole share: cut it at a word
            window = _cut_words(window, limit, self.count_tokens)
        return window


def _cut_words(text: str, limit: int, count: Callable[[str], int]) -> str:
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # the most words whose token count fits
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
