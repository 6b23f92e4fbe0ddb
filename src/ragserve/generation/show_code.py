"""After verification: a how-to answer that describes a step its source shows in code gets
that code, quoted from the source.

Asked "How do I enable HTTP/2?", the 1.5B reader answers "install the optional HTTP/2
dependencies using pip and instantiate a client with HTTP/2 support enabled" from a source
whose next lines are ``pip install httpx[http2]`` and ``httpx.AsyncClient(http2=True)``,
although its prompt asks for the code. The code is what the person asking needs, and it can be
copied rather than regenerated: a cited source's sentence that introduces a code block (the
block follows it) and that the answer paraphrases (it holds at least half of that sentence's
stemmed content words, the question's own aside) brings its block, as the source has it. Never
to an answer that already shows code. Prose corpora have no code blocks, so this changes
nothing there (SQuAD included).
"""

from __future__ import annotations

from ragserve.generation.citations import strip_markers
from ragserve.generation.support import SentenceSupport
from ragserve.ingest.chunking import split_sentences

__all__ = ["attach_code"]

_FENCE = "```"


def attach_code(
    answer: str,
    texts: list[str],
    cited: list[int],
    support: SentenceSupport,
    *,
    question: str = "",
    min_share: float = 0.5,
    max_blocks: int = 2,
    max_lines: int = 15,
) -> str:
    """``answer`` with up to ``max_blocks`` code blocks (each at most ``max_lines`` lines) that
    its cited sources (1-based numbers in ``cited``, texts in ``texts``) introduce right after
    sentences it paraphrases, in source order."""
    if _shows_code(answer) or not cited:
        return answer
    said = set(support.terms(strip_markers(answer))) - set(support.terms(question))
    blocks: list[str] = []
    for n in dict.fromkeys(cited):
        if not 0 < n <= len(texts):
            continue
        for intro, block in _introductions(texts[n - 1]):
            terms = set(support.terms(intro)) - set(support.terms(question))
            if not terms or len(terms & said) / len(terms) < min_share:
                continue
            if block not in blocks and block.count("\n") <= max_lines + 1:
                blocks.append(block)
    if not blocks:
        return answer
    return answer.rstrip() + "\n\n" + "\n\n".join(blocks[:max_blocks])


def _shows_code(answer: str) -> bool:
    """A fenced block, or inline code with call or assignment syntax (`httpx.Client(timeout=10)`)."""
    if _FENCE in answer:
        return True
    spans = answer.split("`")[1::2]  # the text between each pair of backticks
    return any("(" in span or "=" in span for span in spans)


def _introductions(text: str) -> list[tuple[str, str]]:
    """Each prose sentence of ``text`` that a whole fenced block follows, with that block."""
    found = []
    for a, b in split_sentences(text):
        if text[a:b].lstrip().startswith(_FENCE):
            continue  # a block is not the sentence that introduces one
        block = _block_after(text, b)
        if block:
            found.append((text[a:b], block))
    return found


def _block_after(text: str, end: int) -> str | None:
    """The whole fenced block that starts right after ``text[:end]``, or None."""
    rest = text[end:]
    if not rest.lstrip().startswith(_FENCE):
        return None
    start = end + len(rest) - len(rest.lstrip())
    newline = text.find("\n", start)
    close = text.find(_FENCE, newline + 1) if newline >= 0 else -1
    if close < 0:
        return None  # cut off by the context window: never show half a block
    return text[start : close + len(_FENCE)]
