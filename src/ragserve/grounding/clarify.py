"""Clarifying questions: "Do you mean X or Y?" when a turn never says which thing it means.

A person asks "What is the actor's approach to fitness?" or "In which country is this
language officially spoken?" as if the subject were known. When the conversation never named
one, and the best sources are about several different things of that kind, the helpful reply
is to ask back, naming what the documents hold, rather than answer about one at random or
refuse.

Two signals, both cheap and explainable:

* **An unresolved reference**: a definite or demonstrative noun phrase ("the actor", "this
  burger", "the animal's breed") whose noun is said nowhere earlier in the conversation, in a
  turn that names nothing specific itself (no capitalised name past its first word).
* **Several readings**: the best sources name at least two different subjects (their titles,
  sections or first lines), and none of them is named in the conversation.

A turn of a conversation with an unresolved reference that the gate would refuse (no source
is about it as asked) gets "Which credit card do you mean?" instead (:func:`which_one`): the documents may
well hold the answer for the right one, and a refusal tells the person nothing about why. This
is how MTRAG's reference replies to such turns read ("Which credit card are you talking
about?").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ragserve.text.support import STOPWORDS
from ragserve.types import Hit, Message

__all__ = ["clarifying_question", "readings", "unresolved_reference", "which_one"]

_DETERMINERS = frozenset({"the", "this", "that", "these", "those"})
# Where a noun phrase ends: prepositions, and (without a tagger) words shaped like verbs and
# adverbs ("the actor received", "this language officially spoken").
_PHRASE_END = frozenset(
    "behind between during after before over under without within across against among "
    "through like near since until upon via per too very".split()
)
_NOT_AMBIGUOUS = frozenset(
    """answer answers question questions document documents source sources article text page
    same other first second third last next previous former latter above following best most
    way case time world end difference differences reason reasons fact idea point one ones
    thing things rest question's result results process list part example
    """.split()
)
_WORD = re.compile(r"[A-Za-z][\w'-]*")


def unresolved_reference(turn: str, history: Sequence[Message]) -> str | None:
    """The noun of a reference the conversation never resolves, if the turn has one."""
    phrase = _unresolved_phrase(turn, history)
    return None if phrase is None else phrase.split()[-1]


def which_one(turn: str, history: Sequence[Message]) -> str | None:
    """ "Which <phrase> do you mean?" for a turn with an unresolved reference, else None."""
    phrase = _unresolved_phrase(turn, history)
    return None if phrase is None else f"Which {phrase} do you mean?"


def _unresolved_phrase(turn: str, history: Sequence[Message]) -> str | None:
    if _names_something(turn):
        return None
    said = {w.lower().rstrip("s") for m in history for w in _WORD.findall(m.content)}
    for phrase in _referenced_phrases(turn):
        noun = phrase.split()[-1]
        if noun not in _NOT_AMBIGUOUS and noun.rstrip("s") not in said:
            return phrase
    return None


def _referenced_phrases(turn: str) -> list[str]:
    """Each "the/this/... <up to 3 words>" phrase, its head noun last, unless an "of ..." or
    a name follows that says which one ("the battle of Bull Run")."""
    words = [w.lower() for w in _WORD.findall(turn)]
    nouns: list[str] = []
    for i, word in enumerate(words):
        if word not in _DETERMINERS:
            continue
        phrase: list[str] = []
        for nxt in words[i + 1 : i + 4]:
            if nxt in STOPWORDS or nxt in _DETERMINERS or nxt in _PHRASE_END:
                break
            if phrase and len(nxt) > 4 and nxt.endswith(("ly", "ed", "ing")):
                break
            phrase.append(nxt)
            if nxt.endswith(("'s", "’s")):
                break
        rest = words[i + 1 + len(phrase) : i + 2 + len(phrase)]
        if not phrase or rest == ["of"]:
            continue
        noun = re.sub(r"(?:'s|’s)$", "", phrase[-1])
        if len(noun) >= 3:
            nouns.append(" ".join([*phrase[:-1], noun]))
    return nouns


def readings(hits: Sequence[Hit], *, limit: int = 3, min_rerank: float = 0.0) -> list[str]:
    """The distinct subjects the best sources are about, best first. The sections of one
    document are one reading: "Is the library thread safe?" over three parts of the zlib
    manual is not a choice between its page header and its FAQ link. A source the re-ranker
    gives less than ``min_rerank`` is no reading: the documents do not hold it as an answer."""
    names: list[str] = []
    documents: set[str] = set()
    for hit in hits:
        if hit.chunk.doc_id in documents or hit.scores.get("rerank", 1.0) < min_rerank:
            continue
        documents.add(hit.chunk.doc_id)
        name = _subject(hit)
        if name and name.lower() not in {n.lower() for n in names}:
            names.append(name)
        if len(names) == limit:
            break
    return names


def clarifying_question(
    turn: str, history: Sequence[Message], hits: Sequence[Hit], *, min_rerank: float = 0.0
) -> str | None:
    """A short question naming the readings, when the turn needs one; otherwise None."""
    noun = unresolved_reference(turn, history)
    if noun is None:
        return None
    found = readings(hits, min_rerank=min_rerank)
    said = " ".join(m.content for m in history).lower()
    if len(found) < 2 or any(name.lower() in said for name in found):
        return None
    options = ", ".join(found[:-1]) + f" or {found[-1]}"
    return f"Do you mean {options}?"


def _names_something(turn: str) -> bool:
    """A capitalised word past the turn's first (a name), other than "I"."""
    words = _WORD.findall(turn)[1:]
    return any(w[0].isupper() and w not in {"I", "I'm", "I've", "I'd"} for w in words)


def _subject(hit: Hit) -> str | None:
    chunk = hit.chunk
    for name in (chunk.title, chunk.section, _first_line(chunk.text)):
        if name and 2 < len(name) <= 60:
            return name.strip()
    return None


def _first_line(text: str) -> str | None:
    line = text.strip().split("\n", 1)[0].strip()
    # A title line: short, and not a sentence of the body.
    return line if line and not line.endswith((".", "?", "!", ":")) else None
