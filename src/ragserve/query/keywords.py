"""Content words of a text: what is left once stop words and question scaffolding go."""

from __future__ import annotations

import re

__all__ = ["FOLLOW_UP", "STOPWORDS", "keywords"]

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves tell please explain
    describe give know want need like also us let lets does dont""".split()
)

FOLLOW_UP = re.compile(
    r"^(and|but|also|so|what about|how about|then|why|ok|okay)\b|"
    r"\b(it|its|it's|they|them|their|this|that|these|those|he|she|his|her|there|the same|one)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w][\w.+#-]*", re.UNICODE)


def keywords(text: str) -> list[str]:
    """Content words in order, de-duplicated (case-insensitive)."""
    seen: set[str] = set()
    out: list[str] = []
    for word in _WORD.findall(text):
        low = word.lower().strip(".")
        if low and low not in STOPWORDS and low not in seen and (len(low) > 1 or low.isdigit()):
            seen.add(low)
            out.append(word.strip("."))
    return out
