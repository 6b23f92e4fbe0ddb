"""Condense a conversation turn into a standalone query that keeps the conversation's subject.

The subject of a conversation is what its earlier turns keep talking about. Each content word
of an earlier turn (the assistant's included: its answers name what the documents call the
subject, "timeout" where the user wrote "it") scores

    sum over the turns it is in of  recency ** turns_back * role weight * informativeness

(an entity, a capitalised name or an identifier, counts ``entity_boost`` times), where
informativeness is the word's IDF in the corpus (a :class:`TermWeight`), so "Oh",
"thank" or "informing", which no document is about, count for almost nothing. The best few
words the turn does not already hold are appended in brackets, in the order the conversation
first used them, so the standalone query stays readable: it is shown to the user.

Without corpus statistics every word not in the small-talk lexicon counts 1: a sane fallback
for an index not yet opened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragserve.query.intent import SMALL_TALK_WORDS, is_small_talk
from ragserve.query.keywords import FOLLOW_UP, keywords
from ragserve.query.term_weights import TermWeight
from ragserve.types import Message

__all__ = ["SubjectCondenser", "looks_like_follow_up"]

# What an assistant says about its own answer, never what the conversation is about.
_META = frozenset(
    """answer answers question questions information documents document provided provide
    specific sorry unable find context mentioned""".split()
)
# A name or an identifier: "Austen", "FAFSA", "httpx.AsyncClient", "C-section", "401k".
_ENTITY = re.compile(r"^(?:[A-Z][\w'-]*|\w*[._]\w+|\w*\d\w*)$")


def looks_like_follow_up(query: str) -> bool:
    """Today's trigger: an anaphor or a leading connective, or at most two content words."""
    return bool(FOLLOW_UP.search(query)) or len(keywords(query)) <= 2


@dataclass(frozen=True, slots=True)
class _Candidate:
    word: str
    first_seen: int  # position in the conversation, for a readable order
    score: float


class SubjectCondenser:
    """``condense(query, history) -> str``: the turn plus the conversation's subject words.

    ``only_follow_ups`` keeps a turn that does not look like a follow-up unchanged; off, every
    turn with history gets the subject (a full question still ranks by its own words, because
    the re-ranker and BM25 weigh them above the bracketed few).
    """

    def __init__(
        self,
        term_weight: TermWeight | None = None,
        *,
        max_terms: int = 4,
        recency: float = 0.6,
        assistant_weight: float = 0.5,
        entity_boost: float = 1.5,
        min_weight: float = 0.25,
        max_turns: int = 6,
        only_follow_ups: bool = False,
    ) -> None:
        self.term_weight = term_weight
        self.max_terms = max_terms
        self.recency = recency
        self.assistant_weight = assistant_weight
        self.entity_boost = entity_boost
        self.min_weight = min_weight
        self.max_turns = max_turns
        self.only_follow_ups = only_follow_ups

    def condense(self, query: str, history: Sequence[Message]) -> str:
        if not history or (self.only_follow_ups and not looks_like_follow_up(query)):
            return query
        terms = self.subject(query, history)
        return f"{query} ({' '.join(terms)})" if terms else query

    def subject(self, query: str, history: Sequence[Message]) -> list[str]:
        """The best ``max_terms`` subject words of the history not already in ``query``."""
        present = {_norm(w) for w in keywords(query)}
        best = sorted(self._candidates(history, present), key=lambda c: -c.score)
        chosen = [c for c in best[: self.max_terms] if c.score > 0]
        return [c.word for c in sorted(chosen, key=lambda c: c.first_seen)]

    def _candidates(self, history: Sequence[Message], present: set[str]) -> list[_Candidate]:
        turns = _recent_turns(history, self.max_turns)
        scores: dict[str, float] = {}
        first: dict[str, tuple[int, str]] = {}
        position = 0
        for back, message in turns:
            role = 1.0 if message.role == "user" else self.assistant_weight
            decay = self.recency**back * role
            for word, entity in _words(message.content):
                key = _norm(word)
                position += 1
                if key in present or key in SMALL_TALK_WORDS or key in _META or not _wordlike(key):
                    continue
                first.setdefault(key, (position, word))
                boost = self.entity_boost if entity else 1.0
                scores[key] = scores.get(key, 0.0) + decay * boost
        out = []
        for key, raw in scores.items():
            weight = self._weight(first[key][1])
            if weight >= self.min_weight:
                out.append(_Candidate(first[key][1], first[key][0], raw * weight))
        return out

    def _weight(self, word: str) -> float:
        return 1.0 if self.term_weight is None else self.term_weight(word)


def _recent_turns(history: Sequence[Message], max_turns: int) -> list[tuple[int, Message]]:
    """The last ``max_turns`` exchanges, oldest first, each with how many user turns back it
    is (an answer counts with the question it answers); small talk carries no subject."""
    out: list[tuple[int, Message]] = []
    back = 0
    for message in reversed(history):
        if back >= max_turns:
            break
        if message.role not in ("user", "assistant") or is_small_talk(message.content):
            if message.role == "user":
                back += 1
            continue
        out.append((back, message))
        if message.role == "user":
            back += 1
    return out[::-1]


def _words(text: str) -> list[tuple[str, bool]]:
    """Content words, each with whether it names something (a sentence's first word is
    capitalised by grammar, not because it is a name)."""
    out: list[tuple[str, bool]] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        first = sentence.split(maxsplit=1)[0].strip("\"'(*`") if sentence.strip() else ""
        for word in keywords(sentence):
            named = bool(_ENTITY.match(word)) and (word != first or word.isupper())
            out.append((word, named))
    return out


def _norm(word: str) -> str:
    low = word.lower()
    # A crude plural fold, so "clients" in the turn counts as the history's "client".
    return low[:-1] if len(low) > 3 and low.endswith("s") and not low.endswith("ss") else low


def _wordlike(key: str) -> bool:
    return any(ch.isalpha() for ch in key)
