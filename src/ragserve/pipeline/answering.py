"""One answer, stage by stage: the order of the stages and what passes between them.

    turn (+ conversation) -> 1 process (standalone query) -> 2 retrieve -> 3 rerank
        -> answerability judge? -> clarify? -> answer policy's gate -> 4 assemble context
        -> 5 generate, verified sentence by sentence -> answer + citations

``RagPipeline`` builds and loads the components; :class:`AnswerFlow` runs them for one turn.
What is accepted or refused is decided in ``grounding.policy`` only; what to ask back in
``grounding.clarify``.
"""

from __future__ import annotations

from collections.abc import Generator as TextStream
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.grounding.clarify import clarifying_question, which_one
from ragserve.grounding.verified_stream import VerifiedStream
from ragserve.pipeline.timing import StageTimer
from ragserve.types import Answer, AnswerKind, Hit, Intent, Message, ProcessedQuery

if TYPE_CHECKING:
    from ragserve.context.assembler import AssembledContext
    from ragserve.pipeline.rag import RagPipeline

__all__ = [
    "CHITCHAT_REPLY",
    "CONVERSATION_REPLY",
    "OUT_OF_SCOPE_REPLY",
    "AnswerFlow",
    "StreamEvent",
]

CHITCHAT_REPLY = (
    "Hello! I answer questions about the documents in this knowledge base, with sources. "
    "What would you like to know?"
)
CONVERSATION_REPLY = "Glad it helps. What else would you like to know about it?"
OUT_OF_SCOPE_REPLY = "I can only answer questions about the documents in this knowledge base."


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: str
    """'token' (``text`` set) or 'done' (``answer`` set)."""
    text: str = ""
    answer: Answer | None = None


class AnswerFlow:
    """The stages of one answer over a loaded pipeline's components."""

    def __init__(self, pipeline: RagPipeline) -> None:
        self.pipeline = pipeline

    def run(self, query: str, history: list[Message]) -> Iterator[StreamEvent]:
        p, g = self.pipeline, self.pipeline.settings.generation
        timer = StageTimer()
        with timer.stage("query"):
            processed = p.process(query, history)
        base = Answer(
            query=processed.original,
            text="",
            sources=[],
            intent=processed.intent,
            standalone_query=processed.text,
        )
        if processed.intent is not Intent.QUESTION:
            yield from self._reply_without_sources(base, bool(history), timer)
            return
        hits = p.search(processed, timer)
        conversation_gate = bool(history) and g.conversation_gate
        if hits and p.judge is not None and (conversation_gate or g.answerability):
            with timer.stage("answerability"):
                hits = self._judge_answerability(processed, hits, both_readings=conversation_gate)
        base.sources = hits
        ask = self._ask_back(processed, history, hits)
        if ask is not None:
            yield from _finish(base, ask, "clarify", timer)
            return
        reason = self._gate(processed, hits, in_conversation=bool(history))
        if reason is not None:
            # In a conversation only: 0.15 of SQuAD's single questions ("What day was the game
            # played on?") read as underspecified out of their paragraph.
            ask = which_one(processed.original, history) if g.clarify and history else None
            if ask is not None and reason == "low_support":
                yield from _finish(base, ask, "clarify", timer)
                return
            base.refused, base.refusal_reason = True, reason
            yield from _finish(base, REFUSAL_TEXT, "refusal", timer)
            return
        assert p.assembler is not None
        with timer.stage("context"):
            context = p.assembler.assemble(processed.text, hits, history, focus=processed.focus)
        base.context_tokens = context.tokens
        yield from self._generate(processed, context, history, base, timer)

    def _ask_back(
        self, processed: ProcessedQuery, history: list[Message], hits: list[Hit]
    ) -> str | None:
        """'Do you mean X or Y?' when the turn never says which and the sources hold several.

        A reading is a source the re-ranker lets through the single-question gate: counting
        every source asked back 0.05 of SQuAD's questions (gold paragraph in the index) and
        0.12 of MTRAG's unanswerable turns; at 0.1, 0.01 and 0, for 0.09 of the underspecified
        turns asked back instead of 0.23 (research/clarify_floor.py)."""
        p = self.pipeline
        if not p.settings.generation.clarify:
            return None
        floor = p.policy.refusal_threshold if p.reranker is not None else 0.0
        return clarifying_question(processed.original, history, hits, min_rerank=floor)

    def _gate(
        self, processed: ProcessedQuery, hits: list[Hit], *, in_conversation: bool
    ) -> str | None:
        p, g = self.pipeline, self.pipeline.settings.generation
        return p.policy.gate(
            processed.text,
            hits,
            reranked=p.reranker is not None,
            judge_threshold=p.judge.threshold if p.judge and g.answerability else None,
            turn=processed.original,
            in_conversation=in_conversation,
        )

    @staticmethod
    def _reply_without_sources(
        base: Answer, in_conversation: bool, timer: StageTimer
    ) -> Iterator[StreamEvent]:
        if base.intent is Intent.OUT_OF_SCOPE:
            base.refused, base.refusal_reason = True, "out_of_scope"
            yield from _finish(base, OUT_OF_SCOPE_REPLY, "refusal", timer)
        else:
            # Small talk inside a conversation ("This is impressive, right?") is answered as
            # such: a greeting would restart it, and a search would make a claim of it.
            reply = CONVERSATION_REPLY if in_conversation else CHITCHAT_REPLY
            yield from _finish(base, reply, "reply", timer)

    def _judge_answerability(
        self, processed: ProcessedQuery, hits: list[Hit], *, both_readings: bool
    ) -> list[Hit]:
        """Attach the judge's P(answers the question) to the best few sources (the order stays
        retrieval's: re-ordering by the judge put the gold first less often, 0.79 vs 0.83).
        With ``both_readings``, the better of the standalone question and the user's words."""
        p = self.pipeline
        assert p.judge is not None
        n = p.settings.generation.answerability_candidates
        passages = [h.chunk.searchable_text for h in hits[:n]]
        probs = p.judge.score(processed.text, passages)
        if both_readings and processed.original != processed.text:
            own = p.judge.score(processed.original, passages)
            probs = [max(a, b) for a, b in zip(probs, own, strict=True)]
        # Not with_score: that would make the judge's probability the ranking score.
        scored = [
            replace(h, scores={**h.scores, "answerable": prob})
            for h, prob in zip(hits, probs, strict=False)
        ]
        return scored + hits[len(scored) :]

    def _generate(
        self,
        processed: ProcessedQuery,
        context: AssembledContext,
        history: list[Message],
        base: Answer,
        timer: StageTimer,
    ) -> Iterator[StreamEvent]:
        generator = self.pipeline.generator
        assert generator is not None
        draft = VerifiedStream(
            self.pipeline.policy,
            processed.text,
            context,
            quoted=generator.quotes_sources,
            turn=processed.original,
            resolved=processed.focus,
        )
        # The user's own words, with the history: asked the resolved turn instead, the reader
        # lost 4 of MTRAG's answers and the sample corpus's "Does HTTPS also work with SOCKS?"
        # (the rule took "it" for HTTPS, not the proxy). The resolution serves retrieval.
        pieces = generator.stream(processed.original, context, history)
        with timer.stage("generate"):
            try:
                for piece in pieces:
                    released = draft.feed(piece)
                    if released:
                        if "ttft" not in timer.timings:
                            timer.mark("ttft")
                        yield StreamEvent("token", text=released)
                    if draft.refused_at_once:
                        break
            finally:
                if isinstance(pieces, TextStream):  # stops the model once the answer is settled
                    pieces.close()
        verdict, rest = draft.finish()
        base.sources = context.sources
        base.invalid_citations = draft.invalid_citations
        if not verdict.accepted:
            base.refused, base.refusal_reason = True, verdict.reason or "model"
            yield from _finish(base, REFUSAL_TEXT, "refusal", timer)
            return
        base.citations = verdict.citations
        if rest:
            yield StreamEvent("token", text=rest)
        base.text, base.kind = verdict.text, "answer"
        base.timings = timer.done()
        yield StreamEvent("done", answer=base)


def _finish(base: Answer, text: str, kind: AnswerKind, timer: StageTimer) -> Iterator[StreamEvent]:
    """A reply decided without the reader's words: sent whole, as one token event."""
    base.text, base.kind = text, kind
    if base.refused:
        base.citations = []
    timer.mark("ttft")
    yield StreamEvent("token", text=text)
    base.timings = timer.done()
    yield StreamEvent("done", answer=base)
