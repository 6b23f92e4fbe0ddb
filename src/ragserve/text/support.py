"""How well the sources support an answer to a question, sentence by sentence.

One scorer serves two stages: the extractive answerer quotes the best-supported sentences, and
the pipeline's refusal gate declines to answer (with any backend) when even the best sentence
covers too little of the question (``settings.generation.min_support``). On held-out SQuAD questions this
lexical support separates "the answer is in the sources" from "its paragraph was removed" far
better than the best dense cosine (ROC AUC 0.83 vs 0.63; ``research/calibrate_refusal.py``).

Sentences are scored by stemmed, IDF-weighted overlap with the question, the IDF taken over the
candidate sentences themselves so that the topic words every source repeats count little and
the question's specific words count a lot.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from ragserve.text.sentences import CODE_FENCES, split_sentences
from ragserve.text.stemming import stem_words, stemmer

__all__ = ["STOPWORDS", "ScoredSentence", "SentenceSupport", "own_words"]

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'_-]*")
# The parts of a code identifier: `TimeoutException` and `file_size` are also the words a user
# asks in ("what exception", "the size of a file").
_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Code identifiers and numbers as the citation check reads them: `AsyncHTTPTransport(retries=1)`
# is the words AsyncHTTPTransport, retries and 1.
_ANY_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    "a an the of to in on for and or but is are was were be been being by with as at from that "
    "this these those it its what which who whom whose when where why how do does did can could "
    "should would will shall may might must has have had not no yes i you he she they we me my "
    "your his her their our there here than then so if into about also any some such".split()
)


def own_words(text: str, question: str, *, content_only: bool = True) -> list[str]:
    """The words of ``text`` the question does not already contain (lowercased; code
    identifiers and numbers count), without function words unless ``content_only`` is off.
    What a source must hold for an answer to be grounded, and what traces it to a sentence."""
    asked = {w.lower() for w in _ANY_WORD.findall(question)}
    words = [w.lower() for w in _ANY_WORD.findall(text)]
    return [w for w in words if w not in asked and not (content_only and w in STOPWORDS)]


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
    """Scores every usable sentence of a set of sources against a question.

    Safe to share between request threads: it keeps no stemmer of its own, each thread stems
    with its own (``ragserve.text.stemming``, as BM25's tokenizer does).
    """

    def warm_up(self) -> None:
        stemmer()  # fail at start, not at the first question, if PyStemmer is missing

    def terms(self, text: str) -> list[str]:
        """Stemmed content words: what the question and a sentence are compared on."""
        return self._terms(text)

    def _terms(self, text: str) -> list[str]:
        words = []
        for word in _WORD.findall(text):
            words.append(word.lower())
            parts = [] if "'" in word else _PART.findall(word)
            if len(parts) > 1:
                words += [p.lower() for p in parts if len(p) > 1]
        return stem_words([w for w in words if w not in STOPWORDS])

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
                skip = len(sentence.split()) < 4 or sentence.startswith(
                    ("#", *CODE_FENCES, "|", ">>>")
                )
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

    def answer_coverage(self, question: str, answer: str, texts: list[str]) -> float:
        """Share of the question's terms found around the source sentence the answer came from.

        For each sentence of the answer, the source sentence holding most of its own content
        words (those the question does not already contain), with one sentence either side; the best
        of them counts, so an answer's second, looser sentence does not sink its first. When
        the sources are on topic but do not hold the answer, a small model still answers, from
        a sentence about something else ("What country currently has a group who call
        themselves Huguenots?" "France", from a sentence on where they came from). That
        sentence covers little of the question. 0 when the answer has no words of its own.
        """
        q_terms = set(self._terms(question))
        if not q_terms:
            return 0.0
        best = 0.0
        for a, b in split_sentences(answer):
            words = own_words(answer[a:b], question)
            if words:
                window = self._source_window(words, texts)
                best = max(best, len(q_terms & set(self._terms(window))) / len(q_terms))
        return best

    @staticmethod
    def _source_window(words: list[str], texts: list[str]) -> str:
        """The source sentence holding the largest share of ``words``, with its neighbours."""
        best, window = -1.0, ""
        for text in texts:
            spans = split_sentences(text)
            for i, (a, b) in enumerate(spans):
                vocab = {w.lower() for w in _ANY_WORD.findall(text[a:b])}
                share = sum(w in vocab for w in words) / len(words)
                if share > best:
                    lo, hi = spans[max(0, i - 1)][0], spans[min(len(spans) - 1, i + 1)][1]
                    best, window = share, text[lo:hi]
        return window
