"""Intent: a greeting, small talk, a request no document base answers, or a question.

Small talk inside a conversation ("This is impressive, right?", "amazing!", "ok thanks, that
helps") gets a short conversational reply, not retrieval. The test is conservative, because
a statement can be a real turn ("Discover card is a good option.", "Regional differences"):
a turn is small talk only when it asks nothing and one of its sentences is made of nothing but
reactions, fillers and stop words, while every other sentence asks nothing either.
"""

from __future__ import annotations

import re

from ragserve.query.keywords import STOPWORDS
from ragserve.types import Intent

__all__ = ["SMALL_TALK_WORDS", "classify_intent", "is_small_talk"]

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
# Reactions, thanks and fillers: words that carry a mood, never a subject.
SMALL_TALK_WORDS = frozenset(
    """oh ah aha wow whoa ooh hmm hm um uh ok okay okey alright right yes yeah yep yup no nope
    sure cool nice great good awesome amazing impressive interesting fascinating wonderful
    fantastic excellent brilliant perfect lovely neat incredible surprising crazy wild funny
    thanks thank thx ty cheers appreciate appreciated helpful helps help helped informative
    informing aware see got understand understood makes sense fine indeed totally really truly
    quite pretty lol haha glad happy love loved wonder imagine guess bye goodbye welcome
    sorry re ll ve""".split()
)
# A statement that asks for something is a question without a question mark.
_REQUEST = re.compile(
    r"\b(i need|i want|i'?d like|tell me|explain|show me|looking for|wonder|wondering|curious|"
    r"interested|know|info|information|how|what|why|when|where|which|who|can you|could you|"
    r"would you|please|help me)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_TOKEN = re.compile(r"[a-z']+")


def _is_reaction(sentence: str) -> bool:
    words = [w.strip("'") for w in _TOKEN.findall(sentence.lower())]
    words = [w for w in words if w and w not in STOPWORDS and w not in {"s", "t", "m", "re"}]
    return (bool(words) and all(w in SMALL_TALK_WORDS for w in words)) or _only_fillers(sentence)


def _only_fillers(sentence: str) -> bool:
    # "!!!" or an emoji line: something was said, nothing was asked.
    return bool(sentence.strip()) and not any(ch.isalnum() for ch in sentence)


def _asks(sentence: str) -> bool:
    """A question that is not a tag question ("..., right?")."""
    if "?" not in sentence:
        return False
    return not _is_reaction(sentence)


def is_small_talk(text: str) -> bool:
    """A reaction or thanks with no question and no subject of its own."""
    sentences = [s for s in _SENTENCE.findall(text) if s.strip()]
    if not sentences or any(_asks(s) for s in sentences):
        return False
    reactions = [s for s in sentences if _is_reaction(s)]
    if not reactions or any(_REQUEST.search(s) for s in sentences if s not in reactions):
        return False
    # "thought it was old tech but not really so. amazing!": one reaction, one remark that asks
    # nothing. A first sentence with a subject and no reaction at all stays a question.
    return _is_reaction(sentences[-1]) or len(reactions) == len(sentences)


def classify_intent(text: str) -> Intent:
    if _GREETING.match(text) or is_small_talk(text):
        return Intent.CHITCHAT
    if _OUT_OF_SCOPE.search(text):
        return Intent.OUT_OF_SCOPE
    return Intent.QUESTION
