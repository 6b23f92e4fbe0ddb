"""Stage 1: query processing — condense follow-ups, classify intent, expand.

All three run without an LLM, in microseconds, because they sit in front of every request:

* **Condense**: a follow-up ("what about its timeout?") is not searchable on its own. When a
  turn looks like a follow-up (anaphora, ellipsis, very short), the content words of the
  previous user turn are added, so retrieval sees the topic.
* **Intent**: greetings and thanks get a friendly reply without retrieval; requests that no
  document base answers (write me a poem, the weather) are refused cheaply. Everything else is
  a question about the corpus, and the re-ranker's confidence gate decides later whether the
  corpus actually answers it.
* **Expansion**: a keyword-only variant of the query (stop words and question scaffolding
  removed) searched alongside it; helpful for long, chatty questions on the BM25 side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ragserve.errors import EmptyQueryError
from ragserve.types import Intent, Message, ProcessedQuery

__all__ = ["QueryProcessor", "RuleBasedQueryProcessor", "classify_intent", "condense", "keywords"]

_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves tell please explain
    describe give know want need like also us let lets does dont""".split()
)

_FOLLOW_UP = re.compile(
    r"^(and|but|also|so|what about|how about|then|why|ok|okay)\b|"
    r"\b(it|its|it's|they|them|their|this|that|these|those|he|she|his|her|there|the same|one)\b",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^\s*(hi|hello|hey|hiya|howdy|yo|good (morning|afternoon|evening)|greetings|"
    r"thanks|thank you|thx|cheers|bye|goodbye|see you|how are you|who are you|what are you|"
    r"what can you do|help)\b[\s!.?,]*(there|you|so much|a lot|again|bot)?[\s!.?]*$",
    re.IGNORECASE,
)
_OUT_OF_SCOPE = re.compile(
    r"\b(write|compose) (me )?(a |an )?(poem|song|story|essay|joke|limerick)\b|"
    r"\btell me a joke\b|\bweather (today|tomorrow|forecast)\b|\bwhat time is it\b|"
    r"\b(stock price|lottery numbers|horoscope)\b|\bignore (all |your |the )?(previous|above) "
    r"instructions\b|\b(system prompt|your instructions)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w][\w.+#-]*", re.UNICODE)


def keywords(text: str) -> list[str]:
    """Content words in order, de-duplicated (case-insensitive)."""
    seen: set[str] = set()
    out: list[str] = []
    for word in _WORD.findall(text):
        low = word.lower().strip(".")
        if low and low not in _STOPWORDS and low not in seen and (len(low) > 1 or low.isdigit()):
            seen.add(low)
            out.append(word.strip("."))
    return out


def classify_intent(text: str) -> Intent:
    if _GREETING.match(text):
        return Intent.CHITCHAT
    if _OUT_OF_SCOPE.search(text):
        return Intent.OUT_OF_SCOPE
    return Intent.QUESTION


def condense(query: str, history: Sequence[Message]) -> str:
    """Standalone form of a follow-up: the query plus the topic words of the last user turn."""
    previous = next((m.content for m in reversed(history) if m.role == "user"), None)
    if not previous:
        return query
    words = keywords(query)
    if not (_FOLLOW_UP.search(query) or len(words) <= 2):
        return query
    topic = [w for w in keywords(previous) if w.lower() not in {x.lower() for x in words}]
    return f"{query} ({' '.join(topic[:8])})" if topic else query


@runtime_checkable
class QueryProcessor(Protocol):
    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery: ...


class RuleBasedQueryProcessor:
    def __init__(
        self,
        *,
        condense_history: bool = True,
        expansion: bool = False,
        intent_detection: bool = True,
    ) -> None:
        self.condense_history = condense_history
        self.expansion = expansion
        self.intent_detection = intent_detection

    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery:
        original = query.strip()
        if not original:
            raise EmptyQueryError()
        intent = classify_intent(original) if self.intent_detection else Intent.QUESTION
        text = condense(original, history) if self.condense_history else original
        expansions: tuple[str, ...] = ()
        if self.expansion and intent is Intent.QUESTION:
            kw = " ".join(keywords(text))
            if kw and kw.lower() != text.lower():
                expansions = (kw,)
        return ProcessedQuery(original=original, text=text, intent=intent, expansions=expansions)
