"""Stage 1: query processing — condense follow-ups, classify intent, expand.

All three run without an LLM, in microseconds, because they sit in front of every request (a
rewrite by the local 1.5B reader costs seconds per turn on a 2-core CPU, far over a 4 s TTFT
budget; benchmarks/conversation_queries.py measures it):

* **Condense**: a follow-up ("what exception do I get when it expires?") is not searchable on
  its own. The conversation's subject words, drawn from every recent turn and weighted by
  recency, role and how informative they are in the corpus, are appended
  (:class:`~ragserve.query.subject.SubjectCondenser`).
* **Intent**: greetings, thanks and small talk get a friendly reply without retrieval;
  requests that no document base answers (write me a poem, the weather) are refused cheaply.
  Everything else is a question about the corpus, and the re-ranker's confidence gate decides
  later whether the corpus actually answers it.
* **Expansion**: a keyword-only variant of the query (stop words and question scaffolding
  removed) searched alongside it; helpful for long, chatty questions on the BM25 side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ragserve.errors import EmptyQueryError
from ragserve.query.intent import classify_intent
from ragserve.query.keywords import keywords
from ragserve.query.subject import SubjectCondenser, looks_like_follow_up, standalone
from ragserve.query.term_weights import TermWeight
from ragserve.types import Intent, Message, ProcessedQuery

__all__ = [
    "QueryProcessor",
    "RuleBasedQueryProcessor",
    "classify_intent",
    "condense",
    "keywords",
]


def condense(query: str, history: Sequence[Message]) -> str:
    """The previous rule, kept as the benchmark's baseline: when the turn looks like a
    follow-up, up to 8 content words of the last user turn."""
    previous = next((m.content for m in reversed(history) if m.role == "user"), None)
    if not previous or not looks_like_follow_up(query):
        return query
    words = {x.lower() for x in keywords(query)}
    topic = [w for w in keywords(previous) if w.lower() not in words]
    return f"{query} ({' '.join(topic[:8])})" if topic else query


@runtime_checkable
class QueryProcessor(Protocol):
    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery: ...


class RuleBasedQueryProcessor:
    """``term_weight`` (the corpus IDF of a word, see
    :class:`~ragserve.query.term_weights.CorpusTermWeights`) keeps chit-chat out of the
    condensed query; without it a small-talk lexicon alone filters the subject words."""

    def __init__(
        self,
        *,
        condense_history: bool = True,
        resolve_pronouns: bool = True,
        expansion: bool = False,
        intent_detection: bool = True,
        term_weight: TermWeight | None = None,
    ) -> None:
        self.condense_history = condense_history
        self.expansion = expansion
        self.intent_detection = intent_detection
        self.condenser = SubjectCondenser(term_weight, resolve_pronouns=resolve_pronouns)

    @property
    def term_weight(self) -> TermWeight | None:
        return self.condenser.term_weight

    @term_weight.setter
    def term_weight(self, value: TermWeight | None) -> None:
        # Wired at warm-up, once the index is open: the processor is built before it is.
        self.condenser.term_weight = value

    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery:
        original = query.strip()
        if not original:
            raise EmptyQueryError()
        intent = classify_intent(original) if self.intent_detection else Intent.QUESTION
        condensed = self.condense_history and intent is Intent.QUESTION
        resolved, terms = (
            self.condenser.condense_parts(original, history) if condensed else (original, [])
        )
        text = standalone(resolved, terms)
        expansions: tuple[str, ...] = ()
        if self.expansion and intent is Intent.QUESTION:
            kw = " ".join(keywords(text))
            if kw and kw.lower() != text.lower():
                expansions = (kw,)
        return ProcessedQuery(
            original=original, text=text, intent=intent, expansions=expansions, resolved=resolved
        )
