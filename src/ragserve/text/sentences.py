"""Sentences and code fences: how every stage that reads text by the sentence splits it.

Chunking packs sentences, the re-ranker scores a candidate's sentence windows, and the reader's
context, grounding and citations all cut answers and sources at the same boundaries; one
splitter keeps them agreeing, and keeps the query-side stages from importing ingestion.
"""

from __future__ import annotations

import re

__all__ = ["CODE_FENCES", "Span", "sentence_windows", "split_sentences", "strip_span"]

Span = tuple[int, int]
# What opens a fenced code block in Markdown (CommonMark): whatever reads sources or answers
# for code (grounding, the context window, show_code) knows both.
CODE_FENCES = ("```", "~~~")

_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs al fig figs eq eqs dr mr mrs ms prof sr jr st no vol pp approx ca cf resp "
    "inc ltd co corp dept univ jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k".split()
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+)")


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentence spans of ``text[start:end]`` (regex with an abbreviation guard).

    A lightweight rule-based splitter: NLTK's punkt needs a data download, and spaCy is far
    heavier than this stage deserves. Newlines that end a paragraph also end a sentence.
    """
    end = len(text) if end is None else end
    spans: list[Span] = []
    cursor = start
    region = text[start:end]
    for m in re.finditer(r"\n\s*\n|" + _SENTENCE_END.pattern, region):
        cut = start + m.end()
        token = m.group(0)
        if token[0] in ".!?":
            before = region[: m.start()].rsplit(None, 1)
            word = before[-1].lower().strip("(\"'") if before else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
            nxt = region[m.end() :].lstrip()[:1]
            if nxt and nxt.islower():
                continue
        spans.append((cursor, cut))
        cursor = cut
    if cursor < end:
        spans.append((cursor, end))
    return [s for s in (strip_span(text, a, b) for a, b in spans) if s[1] > s[0]]


def strip_span(text: str, a: int, b: int) -> Span:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def sentence_windows(text: str, size: int = 2) -> list[str]:
    """Runs of ``size`` consecutive sentences that cover ``text``: one starting at every
    ``size``-th sentence, the last one ending at the text's last sentence (so it may overlap its
    neighbour rather than be shorter). A text with no sentence boundary is one window."""
    spans = split_sentences(text) or [(0, len(text))]
    starts = list(range(0, max(1, len(spans) - size + 1), size))
    if starts[-1] + size < len(spans):
        starts.append(len(spans) - size)
    return [text[spans[i][0] : spans[min(i + size, len(spans)) - 1][1]] for i in starts]
