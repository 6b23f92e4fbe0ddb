"""Stage 4: context assembly — pack re-ranked chunks into the prompt within a token budget.

* Budget from the generator's own tokenizer. The seed's allocation for a 16K window (system
  500, context 8000, query 200, response 2000) is scaled to the model's real window.
* "Lost in the middle" (Liu et al., 2023): models attend best to the start and the end, so the
  most relevant source goes first, the second most relevant last, the rest in between.
* Sources are numbered in the order they are to be read ([Source 1] first: retrieval's best,
  or in the compact context a lower source that covers the question far better), and each
  carries ``file, p.N`` or ``file, section`` so the model can cite it.
* A chunk that does not fit is cut at a sentence boundary, or dropped; never cut mid-sentence.
* Document text is fenced as data: instructions planted in a document are quoted, not obeyed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ragserve.text.sentences import CODE_FENCES, split_sentences
from ragserve.types import Hit, Message

if TYPE_CHECKING:
    from ragserve.text.support import ScoredSentence

__all__ = [
    "AssembledContext",
    "CompactContextAssembler",
    "ContextAssembler",
    "ContextAssemblerProtocol",
    "FocusedContextAssembler",
    "fit_history",
    "source_block",
    "source_label",
]


@dataclass(slots=True)
class AssembledContext:
    sources: list[Hit]
    """Numbered 1..n in reading order: ``[n]`` refers to ``sources[n - 1]``."""
    text: str
    tokens: int
    dropped: int = 0
    history: list[Message] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    """The (possibly sentence-trimmed) text of each source as given to the model."""


@runtime_checkable
class ContextAssemblerProtocol(Protocol):
    """Stage 4's contract: the sources (and conversation) the reader sees, within budget.

    ``query`` is the standalone question retrieval searched; ``focus``, when it differs, what
    the turn itself asks (its pronoun resolved, without the conversation's subject words).
    """

    def assemble(
        self,
        query: str,
        hits: Sequence[Hit],
        history: Sequence[Message] = (),
        *,
        focus: str | None = None,
    ) -> AssembledContext: ...


def fit_history(
    count_tokens: Callable[[str], int], history: Sequence[Message], budget: int
) -> list[Message]:
    """The most recent turns within ``budget`` tokens, oldest first.

    The conversation has its own budget, apart from the sources': shared, one long assistant
    answer used to crowd out every turn, and the reader answered "Are those the only steps?"
    without the steps. A turn too long to fit whole is cut to its opening sentences (an
    answer's first sentences carry its subject) instead of being dropped, and then the older
    turns stop: a later turn is never dropped to keep an earlier one.
    """
    kept: list[Message] = []
    left = budget
    for message in reversed(history):
        cost = count_tokens(message.content) + 4
        if cost <= left:
            kept.append(message)
            left -= cost
            continue
        opening = _opening(count_tokens, message.content, left - 4)
        if opening:
            kept.append(Message(message.role, opening))
        break
    return kept[::-1]


def _opening(count_tokens: Callable[[str], int], text: str, limit: int) -> str:
    """The leading sentences of ``text`` within ``limit`` tokens (else its leading words)."""
    if limit <= 0:
        return ""
    end = 0
    for _a, b in split_sentences(text):
        if count_tokens(text[:b]) > limit:
            break
        end = b
    if end:
        return text[:end].strip()
    words = text.split()
    while words and count_tokens(" ".join(words)) > limit:
        words = words[: max(1, len(words) * 2 // 3)] if len(words) > 1 else []
    return " ".join(words) + (" ..." if words else "")


def source_label(hit: Hit, number: int) -> str:
    # The document's name as it was ingested. Shorter labels (a file's name without its path,
    # none for an opaque id such as MTRAG's) saved 0.5 s of TTFT there but changed 45 of 300
    # SQuAD answers, containment 0.680 -> 0.660, and made MTRAG's answers shorter (content
    # recall 0.25 -> 0.22 on the first 80 tasks): not kept (2026-12-08).
    c = hit.chunk
    where = f", p.{c.page}" if c.page else (f", {c.section}" if c.section else "")
    return f"[Source {number}: {c.source}{where}]"


def _fence(text: str) -> str:
    # Stop a document from closing the fence early and smuggling text outside it.
    return text.replace("<<<", "‹‹‹").replace(">>>", "›››")


def source_block(hit: Hit, number: int, text: str) -> str:
    """One source as the model reads it: its label, then its text fenced as data."""
    return f"{source_label(hit, number)}\n<<<\n{_fence(text)}\n>>>"


def _in_order(
    count_tokens: Callable[[str], int],
    sources: Sequence[Hit],
    texts: Sequence[str],
    *,
    dropped: int,
    history: list[Message],
) -> AssembledContext:
    """Sources numbered 1..n and written in that order (the compact and focused contexts)."""
    packed = "\n\n".join(
        source_block(hit, n, text)
        for n, (hit, text) in enumerate(zip(sources, texts, strict=True), 1)
    )
    return AssembledContext(
        sources=list(sources),
        text=packed,
        tokens=count_tokens(packed),
        dropped=dropped,
        history=history,
        texts=list(texts),
    )


# How much better the best-covering lower source must cover the question to be read first:
# on the training articles' gold-first rate 1.25x to 2x are within a question of each other,
# and 2x moves the fewest.
_READ_FIRST_MARGIN = 2.0

# What the standalone query's coverage adds to the turn's own in a follow-up: enough to break
# the turn's ties towards the conversation's subject ("exists" in the Boost sentence, not in
# "The current directory exists"), too little to outweigh a word the turn asks for.
_SUBJECT_SHARE = 0.25

# A how-to question is answered by what the docs show, and they name a feature in prose before
# they show it: a sentence that introduces code and covers two thirds of what the source's
# best sentence covers anchors the window instead.
_HOW_TO = re.compile(r"\W*(?:how (?:do|can|should|would|could) (?:i|we|you|one)|how to)\b", re.I)
_HOW_TO_SHARE = 2 / 3


def _introduces_code(ranked: Sequence[ScoredSentence]) -> set[tuple[int, int]]:
    """(source, position) of each sentence followed by a code block: among sentences that
    cover the question equally, the one that shows how wins ("a client with HTTP/2 enabled:")."""
    return {(s.source, s.position - 1) for s in ranked if s.text.startswith(CODE_FENCES)}


class ContextAssembler:
    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        context_window: int = 16384,
        system: int = 500,
        context: int = 8000,
        query: int = 200,
        response: int = 2000,
        history_budget: int | None = None,
    ) -> None:
        self.count_tokens = count_tokens
        self.context_window = context_window
        scale = min(1.0, context_window / 16384)
        self.budget_system = int(system * scale)
        self.budget_query = int(query * scale)
        self.budget_response = int(response * scale)
        # Whatever the window leaves after the fixed parts, up to the configured context share.
        rest = context_window - self.budget_system - self.budget_query - self.budget_response
        self.budget_context = max(0, min(int(context * max(scale, 1.0)), rest))
        self.budget_history = max(0, rest - self.budget_context)
        if history_budget is not None:
            self.budget_history = min(self.budget_history, history_budget)

    def assemble(
        self,
        query: str,
        hits: Sequence[Hit],
        history: Sequence[Message] = (),
        *,
        focus: str | None = None,
    ) -> AssembledContext:
        budget = self.budget_context
        chosen: list[tuple[Hit, str]] = []
        used = 0
        dropped = 0
        for number, hit in enumerate(hits, 1):
            block_overhead = self.count_tokens(source_label(hit, number)) + 4
            remaining = budget - used - block_overhead
            if remaining <= 0:
                dropped += len(hits) - number + 1
                break
            text = hit.chunk.text
            tokens = self.count_tokens(text)
            if tokens > remaining:
                text = self._trim_to_sentences(text, remaining)
                if not text:
                    dropped += 1
                    continue
                tokens = self.count_tokens(text)
            chosen.append((hit, text))
            used += tokens + block_overhead
        order = self._lost_in_the_middle_order(len(chosen))
        packed = "\n\n".join(source_block(chosen[i][0], i + 1, chosen[i][1]) for i in order)
        return AssembledContext(
            sources=[h for h, _ in chosen],
            text=packed,
            tokens=self.count_tokens(packed),
            dropped=dropped,
            history=self.trim_history(history, self.budget_history),
            texts=[t for _, t in chosen],
        )

    @staticmethod
    def _lost_in_the_middle_order(n: int) -> list[int]:
        """Positions for relevance ranks 0..n-1: best first, second best last, and so on."""
        front: list[int] = []
        back: list[int] = []
        for rank in range(n):
            (front if rank % 2 == 0 else back).append(rank)
        return front + back[::-1]

    def _trim_to_sentences(self, text: str, limit: int) -> str:
        kept_end = 0
        for _a, b in split_sentences(text):
            if self.count_tokens(text[:b]) > limit:
                break
            kept_end = b
        return text[:kept_end].strip()

    def trim_history(self, history: Sequence[Message], budget: int) -> list[Message]:
        return fit_history(self.count_tokens, history, budget)


class CompactContextAssembler:
    """The few best sources, each cut to the sentence window around what the question asks.

    For a small local model the prompt is the latency: on a 2-core CPU a 1.5B model reads
    about 75 prompt tokens a second, so every source sentence that does not hold the answer
    costs time to first token and gives the model something else to quote. Each source keeps
    the sentence (prose or code) that best covers the question's terms and grows around it,
    next sentence first (how-to prose is usually followed by its code), until its share of the
    budget is spent: half for the best source, the rest split. (Shares that followed each
    source's match, with the best-matching source read first, lifted gold-first on the SQuAD
    sample from 0.827 to 0.837 but lost the demo page's timeout answer: the 1.5B model then
    wrote a tuple form from memory. The narrower rule in ``_choose``, which moves only a source
    that covers the question twice as well, keeps that answer.)
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        budget: int = 240,
        max_sources: int = 3,
        context_window: int = 4096,
        history_budget: int = 200,
        pick_floor: float = 0.1,
    ) -> None:
        from ragserve.text.support import SentenceSupport

        self.count_tokens = count_tokens
        self.budget = budget
        self.max_sources = max_sources
        self.pick_floor = pick_floor
        self.context_window = context_window
        self.history_budget = history_budget
        self.support = SentenceSupport()

    def assemble(
        self,
        query: str,
        hits: Sequence[Hit],
        history: Sequence[Message] = (),
        *,
        focus: str | None = None,
    ) -> AssembledContext:
        chosen, anchors = self._choose(query, hits, focus)
        texts = [
            self._window(hit.chunk.text, anchor, self._share(rank, len(chosen)))
            for rank, (hit, (anchor, _)) in enumerate(zip(chosen, anchors, strict=True))
        ]
        return _in_order(
            self.count_tokens,
            chosen,
            texts,
            dropped=max(0, len(hits) - len(chosen)),
            history=fit_history(self.count_tokens, history, self.history_budget),
        )

    def _choose(
        self, query: str, hits: Sequence[Hit], focus: str | None = None
    ) -> tuple[list[Hit], list[tuple[int, float]]]:
        """The sources to read, with their anchors: the best ``max_sources - 1`` in retrieval
        order, and the last slot for whichever of the rest covers the question best.

        Below its top two, retrieval's order is close to a tie, and a term only one lower
        source holds decides the answer ("retries" appears once in the httpx docs, in
        async.md's code, 4th by retrieval). On SQuAD the gold paragraph was among the sources
        read for 0.890 of 300 training-article questions against 0.887 for the top 3 (0.943 vs
        0.933 on the held-out sample, measured afterwards); taking all 3 by coverage lost (0.877).

        The small model reads its first source most closely: given ssl.md's "configuring client
        instances" first it wrote `httpx.Client(retries=3)`, given async.md first it copied the
        real call. So the last pick is read first, with the first source's half of the budget,
        when it covers the question more than twice as well as the top two
        (``_READ_FIRST_MARGIN``; also when they cover none of it). That moved 8 of 300 training-article
        questions and 7 of the 300 held-out ones, and put the gold paragraph first more often
        on both (0.750 to 0.767, 0.830 to 0.840); reading all three in coverage order lost on
        both (0.737, 0.817). ``research/read_first_margin.py`` measures it.
        """
        keep, anchors = self.picks(query, hits, focus)
        cover = [coverage for _, coverage in anchors]
        if len(hits) > self.max_sources > 1 and cover[-1] > _READ_FIRST_MARGIN * max(cover[:-1]):
            keep, anchors = keep[-1:] + keep[:-1], anchors[-1:] + anchors[:-1]
        return [hits[i] for i in keep], anchors

    def picks(
        self, query: str, hits: Sequence[Hit], focus: str | None = None
    ) -> tuple[list[int], list[tuple[int, float]]]:
        """``_choose``'s picks in retrieval order (indices into ``hits``), with their anchors."""
        fixed = max(self.max_sources - 1, 0)
        if len(hits) <= self.max_sources or fixed == 0:
            keep = list(range(min(len(hits), self.max_sources)))
            return keep, self.anchors(query, [hits[i].chunk.text for i in keep], focus)
        anchors = self.anchors(query, [h.chunk.text for h in hits], focus)
        # ``pick_floor`` keeps a source the re-ranker all but rules out beside another from
        # the slot: "What exception do I get when the timeout expires?" filled it with ssl.md's
        # expired certificate (re-rank 0.02) over the connect timeouts (0.68). Relative: in a
        # SQuAD article every lower paragraph may re-rank near 0, and an absolute floor of
        # 0.05 dropped gold ones.
        rerank = {i: hits[i].scores.get("rerank", 1.0) for i in range(fixed, len(hits))}
        floor = self.pick_floor * max(rerank.values())
        lower = [i for i, score in rerank.items() if score >= floor]
        last = min(lower, key=lambda i: (-round(anchors[i][1], 6), i))
        keep = [*range(fixed), last]
        return keep, [anchors[i] for i in keep]

    def _share(self, rank: int, n: int) -> int:
        """Tokens for the source at ``rank``: half the budget for the best, the rest split."""
        if n == 1:
            return self.budget
        return self.budget // 2 if rank == 0 else self.budget // (2 * (n - 1))

    def anchors(
        self, query: str, texts: list[str], focus: str | None = None
    ) -> list[tuple[int, float]]:
        """For each source, its best sentence's position and the share of the question's
        IDF-weighted terms it covers (code and headings count: a how-to's answer sits there).

        Among equally good sentences the one that introduces code wins, then the earliest:
        docs name a feature in prose first ("HTTP/2 is not enabled by default") and show how
        later ("a client with HTTP/2 enabled:" + code), and the window grows from its anchor.
        For a how-to question ("How do I ...?") a sentence that introduces code counts as an
        equal when it covers ``_HOW_TO_SHARE`` of what the source's best covers: "How do I
        enable HTTP/2 in httpx?" matched "`httpx` ... not enabled by default" fully, and the
        window grown from there ended before `http2=True`.
        """
        ranked = self.support.rank(query, texts, answers_only=False)
        overlap = self._focused(ranked, texts, None if focus == query else focus)
        code_after = _introduces_code(ranked)
        top: dict[int, float] = {}
        for (source, _), value in overlap.items():
            top[source] = max(top.get(source, 0.0), value)
        how_to = bool(_HOW_TO.match(focus or query))
        best: dict[int, tuple[float, bool, int]] = {}
        for sentence in ranked:
            at = (sentence.source, sentence.position)
            shows = at in code_after
            value = overlap[at]
            if how_to and shows and value >= _HOW_TO_SHARE * top[sentence.source]:
                value = top[sentence.source]
            key = (-round(value, 6), not shows, sentence.position)
            if sentence.source not in best or key < best[sentence.source]:
                best[sentence.source] = key
        return [
            (best[n][2], -best[n][0]) if n in best else (0, 0.0) for n in range(1, len(texts) + 1)
        ]

    def _focused(
        self, ranked: Sequence[ScoredSentence], texts: list[str], focus: str | None
    ) -> dict[tuple[int, int], float]:
        """Each sentence's coverage of the question, led by the turn's own words when the
        standalone query adds the conversation's: those find the right sources, but as equals
        they centred the window of "What exception do I get when the timeout expires? (set
        client creating async)" on client code, not on "raise a `TimeoutException`"."""
        plain = {(s.source, s.position): s.overlap for s in ranked}
        if not focus:
            return plain
        own = {
            (s.source, s.position): s.overlap
            for s in self.support.rank(focus, texts, answers_only=False)
        }
        return {k: own.get(k, 0.0) + _SUBJECT_SHARE * v for k, v in plain.items()}

    def _window(self, text: str, anchor: int, limit: int) -> str:
        spans = split_sentences(text) or [(0, len(text))]
        lo, hi, used = _grow(text, spans, min(anchor, len(spans) - 1), limit, self.count_tokens)
        window = text[spans[lo][0] : spans[hi][1]].strip()
        if used > limit:  # one sentence longer than the whole share: cut it at a word
            window = _cut_words(window, limit, self.count_tokens)
        return window


def _grow(
    text: str, spans: list[tuple[int, int]], anchor: int, limit: int, count: Callable[[str], int]
) -> tuple[int, int, int]:
    """The sentences around ``anchor`` that fit ``limit`` tokens, next sentence first (how-to
    prose is usually followed by its code): first and last span index, tokens used."""
    lo = hi = anchor
    used = count(text[spans[anchor][0] : spans[anchor][1]])
    grew = True
    while grew:
        grew = False
        for step in (hi + 1, lo - 1):
            if not 0 <= step < len(spans) or lo <= step <= hi:
                continue
            cost = count(text[spans[step][0] : spans[step][1]])
            if used + cost > limit:
                continue
            used += cost
            lo, hi = min(lo, step), max(hi, step)
            grew = True
    return lo, hi, used


class FocusedContextAssembler:
    """The few sentences that best cover the question, wherever they sit in the best sources.

    Where the compact context gives each of the best sources a window, this keeps only the
    ``sentences`` best-supported spans across them (the extractive answerer's pick), each with
    what it introduces (the code after a sentence ending in ":", the sentence after a heading)
    and grown to ``grow`` tokens with its neighbours. Fewer sentences that do not hold the
    answer means fewer to copy a wrong one from, and a shorter prompt: on 100 SQuAD
    training-article questions with the 1.5B reader, 2 sentences grown to 80 tokens (~153
    tokens) gave containment 0.700 / F1 0.462 in 2.9 s against the compact context's 0.670 /
    0.431 in ~4.5 s. Not the default: on how-to docs the sentence that names the feature and
    the code that shows it are often further apart than that (see the README).
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        sentences: int = 2,
        budget: int = 240,
        max_sources: int = 3,
        context_window: int = 4096,
        grow: int = 80,
        history_budget: int = 200,
    ) -> None:
        from ragserve.text.support import SentenceSupport

        self.count_tokens = count_tokens
        self.sentences = sentences
        self.grow = grow
        self.budget = budget
        self.max_sources = max_sources
        self.history_budget = history_budget
        self.support = SentenceSupport()

    def assemble(
        self,
        query: str,
        hits: Sequence[Hit],
        history: Sequence[Message] = (),
        *,
        focus: str | None = None,
    ) -> AssembledContext:
        chosen = list(hits[: self.max_sources])
        texts = [h.chunk.text for h in chosen]
        picks = self._picks(query, texts)
        numbered = [n for n in range(len(chosen)) if n in picks]
        pieces = [self._join(texts[n], picks[n]) for n in numbered]
        return _in_order(
            self.count_tokens,
            [chosen[n] for n in numbered],
            pieces,
            dropped=max(0, len(hits) - len(numbered)),
            history=fit_history(self.count_tokens, history, self.history_budget),
        )

    def _picks(self, query: str, texts: list[str]) -> dict[int, list[tuple[int, int]]]:
        """Per source (0-based), the character ranges kept: best-supported spans first."""
        spans = [split_sentences(t) or [(0, len(t))] for t in texts]
        picks: dict[int, list[tuple[int, int]]] = {}
        used = kept = 0
        ranked = self.support.rank(query, texts, answers_only=False)
        code_after = _introduces_code(ranked)
        # As in the compact context: equal coverage goes to the sentence that introduces code,
        # then to the better source, then to the earlier sentence.
        ranked.sort(
            key=lambda s: (
                -round(s.overlap, 3),
                (s.source, s.position) not in code_after,
                s.source,
                s.position,
            )
        )
        for sentence in ranked:
            if kept == self.sentences or (kept and sentence.overlap <= 0):
                break  # a sentence that covers none of the question is only noise
            n = sentence.source - 1
            lo, hi = self._extent(texts[n], spans[n], sentence.position)
            if self.grow:
                first, last, _ = _grow(
                    texts[n], spans[n], sentence.position, self.grow, self.count_tokens
                )
                lo, hi = min(lo, spans[n][first][0]), max(hi, spans[n][last][1])
            if any(a <= lo and hi <= b for a, b in picks.get(n, [])):
                continue  # already inside an earlier pick's extent
            cost = self.count_tokens(texts[n][lo:hi])
            if kept and used + cost > self.budget:
                continue
            picks.setdefault(n, []).append((lo, hi))
            used, kept = used + cost, kept + 1
        return picks

    @staticmethod
    def _extent(text: str, spans: list[tuple[int, int]], position: int) -> tuple[int, int]:
        """A span plus what it introduces: a heading's next span, a colon's code block."""
        last = min(position, len(spans) - 1)
        while last + 1 < len(spans):
            here = text[spans[last][0] : spans[last][1]].strip()
            following = text[spans[last + 1][0] : spans[last + 1][1]].lstrip()
            if not (
                here.startswith("#") or here.endswith(":") or following.startswith(CODE_FENCES)
            ):
                break
            last += 1
        return spans[min(position, len(spans) - 1)][0], spans[last][1]

    def _join(self, text: str, ranges: list[tuple[int, int]]) -> str:
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        joined = " … ".join(text[lo:hi].strip() for lo, hi in merged)
        if self.count_tokens(joined) > self.budget:  # one span longer than the whole budget
            joined = _cut_words(joined, self.budget, self.count_tokens)
        return joined


def _cut_words(text: str, limit: int, count: Callable[[str], int]) -> str:
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # the most words whose token count fits
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
