"""Grounding: are an answer's words and code in the sources it was given?

The checks after generation read the evidence ``generation.citations`` measures (the share of
an answer's own words, and of its code's token pairs, each source holds); the thresholds and
the decision to refuse are the answer policy's (``grounding.policy``).
"""

from __future__ import annotations

from ragserve.generation.citations import (
    FENCED_CODE,
    MIN_CODE_SHARE,
    best_source,
    code_shares,
    word_shares,
)
from ragserve.text.sentences import split_sentences

__all__ = ["answer_units", "ground", "supported_prefix"]


def ground(
    answer: str, texts: list[str], cited: list[int], *, question: str = "", min_share: float = 0.5
) -> list[int] | None:
    """Check that an answer's own words come from the sources; return the sources to cite.

    A small model asked for "the shortest answer" sometimes states a fact no source holds
    (a date, a name) and cites a source anyway. The answer's content words that the question
    did not already contain must mostly occur in one source: the one it cited if that holds
    them, else the one that does (citation corrected). ``None`` means no source supports it,
    and the caller refuses rather than show an unsupported claim.

    Function words are not evidence either way: counted, a how-to answer's "you can ... when"
    framing sank a correct `AsyncHTTPTransport(retries=1)` answer below the bar. On 100 SQuAD
    training-article questions, content words at 0.5 refused as many answers without the gold
    paragraph as all words at 0.6 (0.58 vs 0.59) and fewer with it (0.11 vs 0.12).

    Code must be copied, not composed: each of its identifiers can sit in a source while the
    call is invented (`httpx.Client(retries=3)` from a page that shows `httpx.Client(verify=...)`),
    so the answer's code is checked on adjacent token pairs as well (``code_shares``).
    """
    shares = word_shares(answer, texts, question, content_only=True)
    code = code_shares(answer, texts, question)
    if code is not None:
        if max(code, default=0.0) < MIN_CODE_SHARE:
            return None
        # The source that holds the words must hold the code: "The exception you get when
        # the timeout expires is `httpx.ConnectError` [1]" took its words from timeouts.md
        # and its code from ssl.md, and was cited to timeouts.md.
        holds = [c >= MIN_CODE_SHARE for c in code]
        cited = [n for n in cited if 0 < n <= len(holds) and holds[n - 1]]
        if shares is not None:
            shares = [s if h else 0.0 for s, h in zip(shares, holds, strict=True)]
    if shares is None:
        return cited or None
    supported = [n for n in cited if 0 < n <= len(shares) and shares[n - 1] >= min_share]
    if supported:
        return supported
    best = best_source(shares, min_share)
    return None if best is None else [best + 1]


def supported_prefix(
    answer: str, texts: list[str], *, question: str = "", min_share: float = 0.5
) -> str:
    """The answer without its trailing sentences that no source supports.

    A small model often closes a correct, copied answer with a line of its own ("This will set
    the number of retries to 1. You can adjust this value as needed."): words no source holds
    that sink the whole answer below ``ground``'s bar, and whether it writes them changes with
    the order of the sources. Such a tail is dropped instead of the answer; what remains is
    grounded again as a whole. A fenced code block is one unit (never cut inside), a sentence
    that only introduced what was dropped ("For example:") goes with it, and so do units
    without words of their own (a bare ``[3]``): the caller cites again. The first unit always
    stays.
    """
    units = answer_units(answer)
    if not units:
        return answer
    keep = len(units)
    while keep > 1:
        a, b = units[keep - 1]
        shares = word_shares(answer[a:b], texts, question, content_only=True)
        if shares is not None and max(shares, default=0.0) >= min_share:
            break
        keep -= 1
    if keep < len(units) and keep > 1 and answer[: units[keep - 1][1]].rstrip().endswith(":"):
        keep -= 1
    return answer[: units[keep - 1][1]].strip()


def answer_units(text: str) -> list[tuple[int, int]]:
    """Sentence spans of ``text``, with each fenced code block as one span."""
    units: list[tuple[int, int]] = []
    cursor = 0
    for m in FENCED_CODE.finditer(text):
        units += split_sentences(text, cursor, m.start())
        units.append((m.start(), m.end()))
        cursor = m.end()
    return units + split_sentences(text, cursor)
