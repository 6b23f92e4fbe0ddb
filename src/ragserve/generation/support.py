"""How well the sources support an answer to a question, sentence by sentence.

One scorer serves two stages: the extractive answerer quotes the best-supported sentences, and
the pipeline's refusal gate declines to answer (with any backend) when even the best sentence
covers too little of the question (``settings.generation.min_support``). On held-out SQuAD questions this
lexical support separates "the answer is in the sources" from "its paragraph was removed" far
better than the best dense cosine (ROC AUC 0.83 vs 0.63; ``benchmarks/calibrate_refusal.py``).

Sentences are scored by stemmed, IDF-weighted overlap with the question, the IDF taken over the
candidate sentences themselves so that the topic words every source repeats count little and
the question's specific words count a lot.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ragserve.ingest.chunking import split_sentences

__all__ = ["ScoredSentence", "SentenceSupport"]

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'_-]*")
_STOP = frozenset(
    "a an the of to in on for and or but is are was were be been being by with as at from that "
    "this these those it its what which who whom whose when where why how do does did can could "
    "should would will shall may might must has have had not no yes i you he she they we me my "
    "your his her their our there here than then so if into about also any some such".split()
)


@dataclass(frozen=True, slots=True)
class ScoredSentence:
    score: float
    overlap: float
    source: int
    """1-based number of the source the sentence comes from."""
    position: int
    text: str
    matched: frozenset[str]
    """The question's terms the sentence contains."""


class SentenceSupport:
    """Scores every usable sentence of a set of sources against a question."""

    def __init__(self) -> None:
        self._stemmer: Any = None

    def warm_up(self) -> None:
        import Stemmer

        self._stemmer = Stemmer.Stemmer("english")

    def terms(self, text: str) -> list[str]:
        """Stemmed content words: what the question and a sentence are compared on."""
        return self._terms(text)

    def _terms(self, text: str) -> list[str]:
        if self._stemmer is None:
            self.warm_up()
        assert self._stemmer is not None
        words = [w.lower() for w in _WORD.findall(text)]
        return self._stemmer.stemWords([w for w in words if w not in _STOP])

    def rank(
        self, query: str, texts: list[str], *, answers_only: bool = True
    ) -> list[ScoredSentence]:
        """Every usable sentence of the sources, best supported first.

        ``overlap`` is the share of the question's IDF mass the sentence covers (IDF over the
        candidate sentences, so words every source repeats count little); ``score`` adds a small
        prior for the source's rank and the sentence's position.
        """
        q_terms = set(self._terms(query))
        candidates: list[tuple[int, int, str, set[str]]] = []
        for number, text in enumerate(texts, 1):
            for position, (a, b) in enumerate(split_sentences(text)):
                sentence = " ".join(text[a:b].split())
                # Headings, code and table rows are not answers a reader can use (but they
                # can be where a how-to's answer sits, for callers that ask for every span).
                skip = len(sentence.split()) < 4 or sentence.startswith(("#", "```", "|", ">>>"))
                if answers_only and skip:
                    continue
                candidates.append((number, position, sentence, set(self._terms(sentence))))
        if not candidates or not q_terms:
            return []
        df = Counter(t for *_, terms in candidates for t in terms)
        n = len(candidates)
        idf = {t: math.log(1 + n / (1 + df[t])) for t in q_terms}
        total = sum(idf.values()) or 1.0
        scored = []
        for number, position, sentence, terms in candidates:
            overlap = sum(idf[t] for t in q_terms & terms) / total
            prior = 0.15 / number + 0.02 / (1 + position)
            scored.append(
                ScoredSentence(
                    overlap + prior, overlap, number, position, sentence, frozenset(terms & q_terms)
                )
            )
        scored.sort(key=lambda s: -s.score)
        return scored

    def best(self, query: str, texts: list[str]) -> float:
        """The best sentence's share of the question covered (0 when nothing is usable)."""
        ranked = self.rank(query, texts)
        return max((s.overlap for s in ranked), default=0.0)
