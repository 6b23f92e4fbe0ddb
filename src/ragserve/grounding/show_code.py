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

from ragserve.generation.citations import FENCED_CODE, INLINE_CODE, strip_markers
from ragserve.text.sentences import CODE_FENCES, split_sentences
from ragserve.text.support import SentenceSupport

__all__ = ["attach_code"]


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
    asked = set(support.terms(question))
    said = set(support.terms(strip_markers(answer))) - asked
    blocks: list[str] = []
    for n in dict.fromkeys(cited):
        if not 0 < n <= len(texts):
            continue
        for intro, block in _introductions(texts[n - 1]):
            terms = set(support.terms(intro)) - asked
            if not terms or len(terms & said) / len(terms) < min_share:
                continue
            if block not in blocks and block.count("\n") <= max_lines + 1:
                blocks.append(block)
    if not blocks:
        return answer
    return answer.rstrip() + "\n\n" + "\n\n".join(blocks[:max_blocks])


def _shows_code(answer: str) -> bool:
    """A fenced block, or inline code with call or assignment syntax (`httpx.Client(timeout=10)`)."""
    if any(fence in answer for fence in CODE_FENCES):
        return True
    return any("(" in span or "=" in span for span in INLINE_CODE.findall(answer))


def _introductions(text: str) -> list[tuple[str, str]]:
    """Each fenced block of ``text`` with the prose sentence right before it; not a block the
    context window cut (no closing fence): never show half a block."""
    found, cursor = [], 0
    for m in FENCED_CODE.finditer(text):
        sentences = split_sentences(text, cursor, m.start())
        block = m.group(0).strip()
        if sentences and block.count(m["fence"]) >= 2:
            a, b = sentences[-1]
            found.append((text[a:b], block))
        cursor = m.end()
    return found
