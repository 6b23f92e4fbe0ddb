"""The one place where an answer is accepted or refused.

Two moments decide, and ``docs/answer-policy.md`` tables both:

* **Before generation** (:meth:`AnswerPolicy.gate`): is the best source strong enough to be
  worth reading? The retrieval score (the answerability judge's probability when it is on, the
  re-ranker's probability when re-ranking is on, else the best dense cosine) and the lexical
  support of the best source sentence. A refusal here costs no generation.
* **After generation** (:meth:`AnswerPolicy.verify`): are the answer's words in a source
  (grounding, with an unsupported closing line dropped rather than the answer), and is the
  source sentence they come from about this question (verification)? The same check runs on
  every prefix of a streamed answer (``grounding.verified_stream``), so what a client is
  shown is what the final answer holds.

Every threshold is a setting (``GenerationSettings``), read here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragserve.config import Settings
from ragserve.context.assembler import AssembledContext
from ragserve.generation.citations import is_refusal, strip_markers, validate_citations
from ragserve.grounding.evidence import ground, supported_prefix
from ragserve.text.sentences import CODE_FENCES, split_sentences
from ragserve.text.support import SentenceSupport, own_words
from ragserve.types import Citation, Hit

__all__ = ["AnswerPolicy", "Verdict"]

_YES = re.compile(r"^\W*(?:yes|yeah|yep|correct|that's right|indeed)\b", re.IGNORECASE)
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|cannot|neither|nor|without|no longer)\b|n't\b", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer after the checks on its words: accepted (``reason`` None) or refused."""

    text: str
    citations: list[Citation] = field(default_factory=list)
    reason: str | None = None
    """'model' (the reader said the sources do not answer), 'unsupported' (its words are in no
    source) or 'unverified' (they come from a sentence about something else)."""

    @property
    def accepted(self) -> bool:
        return self.reason is None and bool(self.text)


class AnswerPolicy:
    """Gates and checks between retrieved text and what the user reads, from one settings object."""

    def __init__(self, settings: Settings, support: SentenceSupport | None = None) -> None:
        self.generation = settings.generation
        self.support = support or SentenceSupport()

    # --- before generation -------------------------------------------------------------------

    def gate(
        self,
        question: str,
        hits: Sequence[Hit],
        *,
        reranked: bool,
        judge_threshold: float | None = None,
        turn: str | None = None,
        in_conversation: bool = False,
    ) -> str | None:
        """The refusal reason before generation ('no_sources', 'low_support'), or None.

        ``question`` is the standalone question; ``turn``, the user's own words, when they
        differ. The sources support the turn if they cover either reading: the subject words
        a follow-up gains are the conversation's, and a source about the turn need not repeat
        them all ("How do I check whether a path exists? (iterate Boost.Filesystem
        directory_iterator)" is answered by the sentence on ``exists``). A turn with history
        (``in_conversation``) whose sources the judge scored is judged by
        :meth:`_conversation_gate` instead.
        """
        if not hits:
            return "no_sources"
        g = self.generation
        if in_conversation and g.conversation_gate and "answerable" in hits[0].scores:
            return self._conversation_gate(hits, self._covered(question, turn, hits))
        if self._weak_retrieval(hits, reranked=reranked, judge_threshold=judge_threshold):
            return "low_support"
        if g.min_support <= 0:
            return None
        return "low_support" if self._covered(question, turn, hits) < g.min_support else None

    def _covered(self, question: str, turn: str | None, hits: Sequence[Hit]) -> float:
        """The lexical support of the better reading over the best ``support_sources``."""
        best = [h.chunk.text for h in hits[: self.generation.support_sources]]
        return max(self.support.best(q, best) for q in _readings(question, turn))

    def _conversation_gate(self, hits: Sequence[Hit], covered: float) -> str | None:
        """Admitted when any one signal vouches for the turn. A follow-up's words are few and
        its referent implicit, so each signal alone misses answerable turns the others see:
        "Which package do I need to install for it?" re-ranks 0.96 and the judge gives 0.11;
        MTRAG's "how can I apply?" turns are the other way round."""
        g = self.generation
        if covered < g.conversation_min_support:
            return "low_support"
        vouched = (
            max(h.scores.get("answerable", 0.0) for h in hits) >= g.conversation_judge_threshold
            or max(h.scores.get("rerank", 0.0) for h in hits) >= g.conversation_rerank_threshold
            or covered >= g.conversation_support_threshold
        )
        return None if vouched else "low_support"

    def _weak_retrieval(
        self, hits: Sequence[Hit], *, reranked: bool, judge_threshold: float | None
    ) -> bool:
        if judge_threshold is not None and "answerable" in hits[0].scores:
            return max(h.scores.get("answerable", 0.0) for h in hits) < judge_threshold
        if reranked:
            return max(h.scores.get("rerank", 0.0) for h in hits) < self.refusal_threshold
        dense = [h.scores["dense"] for h in hits if "dense" in h.scores]
        return bool(dense) and max(dense) < self.generation.dense_refusal_threshold

    @property
    def refusal_threshold(self) -> float:
        # Chosen on 300 SQuAD training-article questions with and without their gold
        # paragraph (docs/answer-policy.md).
        return self.generation.refusal_threshold

    # --- after generation --------------------------------------------------------------------

    def verify(
        self,
        question: str,
        raw: str,
        context: AssembledContext,
        *,
        quoted: bool = False,
        turn: str | None = None,
        resolved: str | None = None,
    ) -> Verdict:
        """The reader's ``raw`` answer checked: markers validated, then (unless ``quoted``:
        an extractive answer is source sentences by construction) grounding and verification.

        ``question`` is the standalone question: a follow-up's words alone would make every
        answer about its subject look unverified. ``turn`` (the user's words) is another
        reading verification accepts, as in :meth:`gate`, and the question grounding reads;
        ``resolved`` (the turn with its pronoun resolved) the third: "What exception do I get
        when the timeout expires?" is what the user asked, and the subject words the
        standalone query adds ("set client creating async") dilute it.
        """
        readings = _readings(question, turn, resolved)
        if not raw.strip() or is_refusal(raw):
            return Verdict("", reason="model")
        text, citations, _invalid = validate_citations(raw.strip(), context)
        if not text or is_refusal(text):
            return Verdict("", reason="model")
        if quoted:
            return Verdict(text, citations)
        # A "yes" restates what the user asked: the subject words the standalone query adds
        # are the conversation's, and a source sentence about them ("options are
        # derivatives") is no evidence for "Yes, it is safe to invest in options." Where the
        # turn's pronoun was resolved, the resolved turn is what it asks: "Could it be the Man
        # with No Name?" is not confirmed by a sentence naming the Man with No Name.
        affirmed = self._affirmation([resolved or turn or question], text, context)
        if affirmed is not None:
            return affirmed
        g = self.generation
        if g.verify_grounding:
            # The words an answer may repeat unsupported are the user's (the turn), not the
            # subject words the condenser put in the standalone query for retrieval: those
            # came from the conversation, and an answer naming them ("It is also known as
            # Rapa Nui") claims them.
            text, citations = self._grounded(turn or question, text, citations, context)
            if not text:
                return Verdict("", reason="unsupported")
        if g.min_answer_coverage > 0 and (
            max(
                self.support.answer_coverage(q, strip_markers(text), context.texts)
                for q in readings
            )
            < g.min_answer_coverage
        ):
            return Verdict("", reason="unverified")
        return Verdict(text, citations)

    def _affirmation(
        self, readings: list[str], text: str, context: AssembledContext
    ) -> Verdict | None:
        """A "yes" that only restates the question ("Yes, the library is thread safe."), or
        None for any other answer. It has no words of its own for grounding or verification
        to trace, so it stands when one source sentence covers the question as verification
        asks (``min_answer_coverage``) and says nothing against it (no negation), and is
        cited to that sentence's source."""
        bare = strip_markers(text)
        if not _YES.match(bare) or any(own_words(bare, q) for q in readings):
            return None
        if len(split_sentences(bare)) > 1:  # "Yes, it smokes. Yes, you can climb it.": each
            return Verdict("", reason="unverified")  # claim needs its own evidence
        ranked = [s for q in readings for s in self.support.rank(q, context.texts)]
        best = max(ranked, key=lambda s: s.overlap, default=None)
        if best is None or best.overlap < self.generation.min_answer_coverage:
            return Verdict("", reason="unverified")
        if _NEGATION.search(best.text):
            return Verdict("", reason="unverified")
        cited, citations, _ = validate_citations(cite_at_end(bare, [best.source]), context)
        return Verdict(cited, citations)

    def show_code(self, question: str, verdict: Verdict, context: AssembledContext) -> str:
        """The accepted answer's text with the code its cited source shows for its steps."""
        if not self.generation.show_code or not verdict.accepted:
            return verdict.text
        from ragserve.grounding.show_code import attach_code

        cited = [c.number for c in verdict.citations]
        return attach_code(verdict.text, context.texts, cited, self.support, question=question)

    @staticmethod
    def _grounded(
        question: str, text: str, citations: list[Citation], context: AssembledContext
    ) -> tuple[str, list[Citation]]:
        """The answer with citations to the sources that hold its words, or no answer; a tail
        of sentences no source supports is dropped rather than the whole answer."""
        cited = [c.number for c in citations]
        numbers = ground(text, context.texts, cited, question=question)
        if numbers is None:
            prefix = supported_prefix(text, context.texts, question=question)
            if prefix == text:
                return "", []
            text, citations, _ = validate_citations(prefix, context)
            cited = [c.number for c in citations]
            numbers = ground(text, context.texts, cited, question=question)
            if numbers is None:
                return "", []
        if numbers == cited:
            return text, citations
        recited, fixed, _ = validate_citations(cite_at_end(text, numbers), context)
        return recited, fixed


def _readings(question: str, turn: str | None, resolved: str | None = None) -> list[str]:
    """The standalone question, and the user's own words (as said, and resolved) that differ."""
    return list(dict.fromkeys(q for q in (question, turn, resolved) if q))


def cite_at_end(text: str, numbers: Sequence[int]) -> str:
    """``text`` without its markers, then ``[n]`` for each of ``numbers``."""
    bare = strip_markers(text)
    # After a code block a marker needs a line of its own, or it would join the fence.
    gap = "\n\n" if bare.endswith(CODE_FENCES) else " "
    return bare + gap + "".join(f"[{n}]" for n in dict.fromkeys(numbers))
