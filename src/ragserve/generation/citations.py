"""After generation: check every ``[n]`` against the sources that were actually given.

Also the evidence two layers read: how much of an answer's words (``word_shares``) and code
(``code_shares``) each source holds. ``attribute`` credits an uncited answer with it here;
the grounding checks (``grounding.evidence``) refuse an unsupported one with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

from ragserve.context.assembler import AssembledContext
from ragserve.text.sentences import CODE_FENCES, split_sentences
from ragserve.text.stemming import stem_words
from ragserve.text.support import own_words
from ragserve.types import Citation

__all__ = [
    "FENCED_CODE",
    "INLINE_CODE",
    "MIN_CODE_SHARE",
    "REFUSAL_TEXT",
    "attribute",
    "best_source",
    "code_shares",
    "is_refusal",
    "strip_markers",
    "validate_citations",
    "word_shares",
]

REFUSAL_TEXT = "I couldn't find that in the documents."

_MARKER = re.compile(
    r"\[(\s*(?:source\s*)?\d+(?:\s*[,;]\s*(?:source\s*)?\d+)*\s*)\]", re.IGNORECASE
)
# A refusal is a reply that *is* one: the prompt asks for exactly "I don't know.", and models
# vary it ("The sources do not say.", "I couldn't find that in the documents."). Every sentence
# of the reply must open as a refusal, so an answer that mentions missing information on the
# way to its point ("There is no information about X in 2010, but the 2000 census lists ...")
# is an answer, not a refusal.
_SOURCES = r"(?:the\s+)?(?:provided\s+|given\s+|available\s+)?(?:document|source|context|text)s?"
_REFUSAL = re.compile(
    (
        # an apology or an attribution may lead in
        r"(?:(?:(?:I'?m\s+|I\s+am\s+)?sorry|unfortunately|(?:based\s+on|according\s+to)\s+SRC)"
        r"\s*[,:]?\s+(?:but\s+)?)*"
        r"(?:I\s+(?:do\s+not|don'?t)\s+know"
        r"|I\s+(?:could\s+not|couldn'?t|cannot|can\s?not|can'?t)\s+find"
        r"|(?:(?:it|that|this|the\s+answer)\s+is\s+|it'?s\s+)?not\s+(?:mentioned|found|"
        r"contained|present|provided|stated|included|given|specified)\s+in\s+SRC"
        r"|SRC\s+(?:do(?:es)?\s+not|don'?t|doesn'?t)\s+(?:contain|mention|provide|say|state|"
        r"specify|include|give)"
        r"|(?:there\s+is\s+|there'?s\s+)?no\s+information\s+(?:about|on|in|regarding|of))\b"
    ).replace("SRC", _SOURCES),
    re.IGNORECASE,
)
# What turns a refusal's sentence into an answer after all ("I don't know the exact figure,
# but the report lists 1,234").
_ANSWER_AFTER_ALL = re.compile(
    r"\b(?:but|however|although|though|yet|except|whereas|while|instead|so|therefore|only)\b",
    re.IGNORECASE,
)
_REFUSAL_WORDS = 40
_WORD = re.compile(r"\w+")


def strip_markers(text: str) -> str:
    """The answer as a person reads it for its content: without its ``[n]`` markers (in its
    prose: `sys.argv[1]` in code is code)."""
    return _on_prose(text, lambda prose: re.sub(r"\s*\[\d+\]", "", prose)).strip()


def _on_prose(text: str, edit: Callable[[str], str]) -> str:
    """``text`` with ``edit`` applied outside its fenced code blocks and inline code spans."""
    out, cursor = [], 0
    for m in _CODE_SPAN.finditer(text):
        out += [edit(text[cursor : m.start()]), m.group(0)]
        cursor = m.end()
    return "".join([*out, edit(text[cursor:])])


def _tidy(prose: str) -> str:
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", prose))


def is_refusal(text: str) -> bool:
    """The reply says the sources do not answer the question, and nothing else: short, no
    ``[n]`` marker, and each sentence opens as a refusal without turning into an answer."""
    reply = text.strip().replace("\u2019", "'")
    if not reply or _MARKER.search(reply) or len(reply.split()) > _REFUSAL_WORDS:
        return False
    for a, b in split_sentences(reply):
        sentence = reply[a:b]
        opening = _REFUSAL.match(sentence)
        if opening is None or _ANSWER_AFTER_ALL.search(sentence, opening.end()):
            return False
    return True


def validate_citations(
    answer: str, context: AssembledContext
) -> tuple[str, list[Citation], list[int]]:
    """Drop markers that point at no source; return the text, valid citations, invalid numbers.

    Each valid citation carries the sentence of its source that best supports the sentence
    of the answer that cites it (token overlap), so a reader can check the claim.
    """
    n_sources = len(context.sources)
    invalid: list[int] = []
    found: dict[int, str] = {}

    def fix(match: re.Match[str]) -> str:
        numbers = [int(x) for x in re.findall(r"\d+", match.group(1))]
        good = [n for n in numbers if 1 <= n <= n_sources]
        invalid.extend(n for n in numbers if n not in good)
        return "".join(f"[{n}]" for n in dict.fromkeys(good))

    # Markers and spacing are fixed in the prose only: code keeps its indentation and its
    # own brackets.
    cleaned = _on_prose(answer, lambda prose: _tidy(_MARKER.sub(fix, prose))).strip()
    prose = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), cleaned)
    for a, b in split_sentences(prose) or [(0, len(prose))]:
        for m in re.finditer(r"\[(\d+)\]", prose[a:b]):
            found.setdefault(int(m.group(1)), cleaned[a:b])
    citations = []
    for number, citing in sorted(found.items()):
        hit = context.sources[number - 1]
        text = context.texts[number - 1] if number - 1 < len(context.texts) else hit.chunk.text
        citations.append(
            Citation(
                number=number,
                chunk_id=hit.chunk.id,
                source=hit.chunk.source,
                page=hit.chunk.page,
                section=hit.chunk.section,
                span=_best_span(text, citing),
            )
        )
    return cleaned, citations, sorted(set(invalid))


def _best_span(source: str, citing: str) -> str:
    target = {w.lower() for w in _WORD.findall(strip_markers(citing))}
    best, best_score = "", -1.0
    for a, b in split_sentences(source) or [(0, len(source))]:
        words = {w.lower() for w in _WORD.findall(source[a:b])}
        score = len(words & target) / (len(words) ** 0.5 + 1)
        if score > best_score:
            best, best_score = source[a:b], score
    return best


def attribute(
    answer: str, texts: list[str], *, question: str = "", min_share: float = 0.6
) -> int | None:
    """The source (1-based) that contains most of an uncited answer's words, if one does.

    For models too small to cite reliably: an answer whose words mostly come from one source
    is credited to it; an answer no source supports gets no citation rather than a made-up one.
    Words the answer repeats from the question prove nothing and are not counted.
    """
    shares = word_shares(answer, texts, question)
    if shares is None:  # empty, or only the question's own words: nothing a source could support
        return None
    best = best_source(shares, min_share)
    return None if best is None else best + 1


def word_shares(
    answer: str, texts: list[str], question: str, *, content_only: bool = False
) -> list[float] | None:
    """Per source, the share of the answer's own words (not the question's) it contains;
    ``None`` when the answer has no words of its own."""
    # Compared as stems: "using" in a source supports an answer's "use", and a plural its
    # singular; a fact an answer invents (a name, a number, an option) has no stem there.
    words = stem_words(
        _numbers(own_words(strip_markers(answer), question, content_only=content_only))
    )
    if not words:
        return None
    shares = []
    for text in texts:
        vocab = set(stem_words(_numbers([w.lower() for w in _WORD.findall(text)])))
        shares.append(sum(w in vocab for w in words) / len(words))
    return shares


_NUMBER_WORDS = {
    w: str(n)
    for n, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


def _numbers(words: list[str]) -> list[str]:
    """Number words as digits, before stemming (which makes "twelve" "twelv"): an answer's
    "8" is the source's "eight" (SQuAD: "8 [1]" for "eight owned-and-operated stations" was
    refused as unsupported)."""
    return [_NUMBER_WORDS.get(w, w) for w in words]


# A fence (``` or ~~~, as CommonMark has them) opens and closes at the start of a line, and
# only the same kind closes it: a ``` line inside a ~~~ block is content. An unclosed block
# runs to the end, as a cut context leaves it. Inline code is a run of single backticks on one
# line. show_code reads answers and sources with the same two.
_FENCE = "|".join(map(re.escape, CODE_FENCES))
FENCED_CODE = re.compile(
    rf"^[ \t]*(?P<fence>{_FENCE})[^\n]*\n.*?(?:^[ \t]*(?P=fence)[^\n]*$|\Z)",
    re.DOTALL | re.MULTILINE,
)
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_CODE_SPAN = re.compile(f"{FENCED_CODE.pattern}|{INLINE_CODE.pattern}", re.DOTALL | re.MULTILINE)
# Shell and REPL prompts, and comments, are not the code's substance. A comment marker counts
# at the start of a line or after a space, so `#include` lines and URL fragments stay code.
_PROMPT = re.compile(r"^\s*(?:>>>|\.\.\.|›››|\$|In \[\d+\]:)\s?")
_COMMENT = re.compile(r"(?:^|\s)(?:#|//)(?!include|define|!).*$")
# A snippet may add an import and still be the source's; an invented call changes most pairs
# on its line (measured on the sample corpus's how-to answers). Pairs with a number are not
# counted: a value is the asker's to choose (`retries=3` where the docs show `retries=1`).
MIN_CODE_SHARE = 0.8


def _code_pairs(text: str) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for line in text.splitlines():
        line = _COMMENT.sub("", _PROMPT.sub("", line))
        words = [w.lower() for w in _WORD.findall(line)]
        pairs.update(p for p in pairwise(words) if not (p[0].isdigit() or p[1].isdigit()))
        if len(words) == 1 and not words[0].isdigit():  # `TimeoutException`: a unit alone
            pairs.add((words[0], ""))
    return pairs


def _code_of(text: str) -> str:
    """The code in ``text``: its fenced blocks (fences dropped) and inline spans."""
    blocks = [
        m.group(0).split("\n", 1)[1].rsplit(m["fence"], 1)[0] for m in FENCED_CODE.finditer(text)
    ]
    prose = FENCED_CODE.sub("\n", text)
    # With a stray backtick the pairs are unknowable: prose would be read as code.
    inline = INLINE_CODE.findall(prose) if prose.count("`") % 2 == 0 else []
    return "\n".join(blocks + inline)


def code_shares(answer: str, texts: list[str], question: str = "") -> list[float] | None:
    """Per source, the share of the adjacent token pairs of the answer's code (fenced blocks
    and inline spans; a one-word span is a unit alone) that occur in it or in the question;
    ``None`` when the answer has no code."""
    pairs = _code_pairs(_code_of(answer))
    if not pairs:
        return None
    question_words = [w.lower() for w in _WORD.findall(question)]
    asked = set(pairwise(question_words)) | {(w, "") for w in question_words}
    shares = []
    for text in texts:
        words = [w.lower() for w in _WORD.findall(text)]
        present = set(pairwise(words)) | {(w, "") for w in words} | asked
        shares.append(len(pairs & present) / len(pairs))
    return shares


def best_source(shares: list[float], min_share: float) -> int | None:
    """Index of the source holding the largest share (the first on a tie), if enough."""
    best = max(range(len(shares)), key=shares.__getitem__, default=None)
    return best if best is not None and shares[best] >= min_share else None
