"""RagPipeline: the five stages of the seed, wired in order.

    turn (+ conversation) -> 1 process (standalone query) -> 2 retrieve -> 3 rerank
        -> clarify? -> answer policy's gate -> 4 assemble context -> 5 generate, verified
        sentence by sentence -> answer + citations

Models load once in ``warm_up``; every method after that is safe to call from worker threads.
What is accepted or refused is decided in ``grounding.policy`` only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator as TextStream
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ragserve.config import Settings
from ragserve.embedding.embedder import SentenceTransformerEmbedder, open_index_with
from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.grounding.clarify import clarifying_question, which_one
from ragserve.grounding.policy import AnswerPolicy
from ragserve.grounding.verified_stream import VerifiedStream
from ragserve.pipeline.cache import SearchCache
from ragserve.pipeline.timing import StageTimer
from ragserve.query.processor import RuleBasedQueryProcessor
from ragserve.retrieval.hybrid import HybridRetriever
from ragserve.runtime.admission import AnswerAdmission
from ragserve.runtime.priority import ForegroundGate
from ragserve.stores import open_index
from ragserve.stores.base import DocumentIndex
from ragserve.types import Answer, AnswerKind, Hit, Intent, Message, ProcessedQuery

if TYPE_CHECKING:
    from ragserve.context.assembler import AssembledContext, ContextAssemblerProtocol
    from ragserve.generation.base import Generator
    from ragserve.grounding.answerability import AnswerabilityJudge
    from ragserve.ingest.pipeline import Ingestor, IngestSummary
    from ragserve.rerank.cross_encoder import Reranker

__all__ = [
    "CHITCHAT_REPLY",
    "CONVERSATION_REPLY",
    "OUT_OF_SCOPE_REPLY",
    "RagPipeline",
    "StreamEvent",
    "recent_turns",
]

log = logging.getLogger("ragserve.pipeline")

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


def recent_turns(history: Sequence[Message], turns: int) -> list[Message]:
    """The last ``turns`` exchanges (a user turn and its answer each); none for 0."""
    return list(history)[-2 * turns :] if turns > 0 else []


class RagPipeline:
    """The five stages over one index. Components are built from settings unless given.

    Construction is cheap; ``warm_up`` loads models. ``warm_up(generation=False)`` loads only
    what retrieval needs, and the generation side loads on the first ``answer``/``stream``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        index: DocumentIndex | None = None,
        embedder: SentenceTransformerEmbedder | None = None,
        reranker: Reranker | None = None,
        judge: AnswerabilityJudge | None = None,
        generator: Generator | None = None,
    ) -> None:
        self.settings = s = settings or Settings()
        self.embedder = embedder or SentenceTransformerEmbedder.from_settings(s)
        self.index: DocumentIndex = index or open_index(s)
        self.query_processor = RuleBasedQueryProcessor(
            condense_history=s.retrieval.condense_history,
            resolve_pronouns=s.retrieval.resolve_pronouns,
            expansion=s.retrieval.query_expansion,
            intent_detection=s.retrieval.intent_detection,
        )
        self.retriever = HybridRetriever.from_settings(self.index, self.embedder, s)
        self.reranker = reranker
        self.judge = judge
        self.generator = generator
        self.policy = AnswerPolicy(s)
        self.assembler: ContextAssemblerProtocol | None = None
        self.cache = SearchCache()
        # Answers and searches in flight: ingestion in the same process yields to them.
        self.foreground = ForegroundGate()
        # Answers a server has admitted (the one being read and those queued for it), counted
        # before they wait for a CPU thread: beyond the reader's bound every face refuses at
        # once. The bound is the generator's, set when it loads.
        self.admission = AnswerAdmission()
        self._ingestor: Ingestor | None = None
        self._retrieval_ready = False
        # Loading only: searches never wait on it (the cache has a lock of its own).
        self._load_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    def warm_up(self, *, generation: bool = True) -> None:
        with self._load_lock:
            if not generation or self.assembler is not None:
                self._warm_retrieval()
                return
            # The reader and the retrieval models load side by side: a first start does slow
            # work on both (joining the reader's GGUF parts, exporting the re-ranker to ONNX).
            with ThreadPoolExecutor(max_workers=1) as pool:
                reader = pool.submit(self._warm_generation)
                self._warm_retrieval()
                self._warm_judge()
                self._prime_search()
                reader.result()

    def _warm_retrieval(self) -> None:
        if self._retrieval_ready:
            return
        self.embedder.warm_up()
        open_index_with(self.index, self.embedder)
        from ragserve.query.term_weights import CorpusTermWeights

        # The corpus's IDF keeps chit-chat words out of a follow-up's subject.
        self.query_processor.term_weight = CorpusTermWeights.from_settings(
            self.index, self.settings
        )
        if self.reranker is None and self.settings.rerank.enabled:
            from ragserve.rerank.cross_encoder import CrossEncoderReranker

            self.reranker = CrossEncoderReranker.from_settings(self.settings)
        if self.reranker is not None:
            self.reranker.warm_up()
        self._retrieval_ready = True

    def _warm_judge(self) -> None:
        # On this thread, after the re-ranker: two threads importing from transformers at
        # once can fail ("cannot import name AutoModelForSequenceClassification").
        g = self.settings.generation
        if self.judge is None and (g.answerability or g.conversation_gate):
            from ragserve.grounding.answerability import AnswerabilityJudge

            self.judge = AnswerabilityJudge.from_settings(self.settings)
        if self.judge is not None:
            self.judge.warm_up()

    def _prime_search(self) -> None:
        """One throwaway search while the reader loads: a runtime's first inference made the
        first question ~150 ms slower; a server pays that before it is ready. Failing here
        only costs that, so it is logged, not raised."""
        try:
            query = self.process("how is it configured?")
            hits = self.retriever.retrieve(query, self.settings.rerank.rerank_candidates)
            if self.reranker is not None and hits:
                self.reranker.rerank(query.text, hits, len(hits))
        except Exception as exc:  # an optimisation: never the reason a start-up fails
            log.warning("priming search at start-up failed (%s); the first query pays it", exc)

    def _warm_generation(self) -> None:
        from ragserve.generation import build_generator
        from ragserve.pipeline.assembly import build_assembler

        s = self.settings
        generator = self.generator or build_generator(s)
        generator.warm_up()
        self.generator = generator
        self.admission.limit = getattr(generator, "max_in_flight", None)
        self.assembler = build_assembler(s, generator)

    def ingest(
        self, paths: Sequence[str | Path], *, prune: bool = False, progress: bool = False
    ) -> IngestSummary:
        """Add or update files and directories (incremental; ``prune`` drops deleted files)."""
        from ragserve.ingest.pipeline import Ingestor

        self.warm_up(generation=False)
        if self._ingestor is None:
            self._ingestor = Ingestor(self.settings, self.index, self.embedder)
        return self._ingestor.ingest_paths([Path(p) for p in paths], prune=prune, progress=progress)

    def check_capacity(self) -> None:
        """Raise GenerationBusyError now if the reader's queue is full."""
        if self.generator is not None:
            self.generator.check_capacity()

    @property
    def cache_hits(self) -> int:
        return self.cache.hits

    @property
    def cache_misses(self) -> int:
        return self.cache.misses

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> RagPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- stages 1-3 ---------------------------------------------------------------------------

    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery:
        return self.query_processor.process(query, history)

    def search(
        self, query: ProcessedQuery, timer: StageTimer | None = None, *, top_k: int | None = None
    ) -> list[Hit]:
        """Retrieve and re-rank; cached per (query, index version)."""
        with self.foreground.foreground():
            return self._search(query, timer or StageTimer(), top_k)

    def _search(self, query: ProcessedQuery, timer: StageTimer, top_k: int | None) -> list[Hit]:
        top_k = top_k or self.settings.retrieval.top_k
        key = (query.text, query.expansions, top_k, self.index.version())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        candidates = self.settings.rerank.rerank_candidates if self.reranker else top_k
        with timer.stage("retrieve"):
            hits = self.retriever.retrieve(query, max(candidates, top_k))
        if self.reranker is not None:
            with timer.stage("rerank"):
                hits = self.reranker.rerank(query.text, hits, top_k)
        else:
            hits = hits[:top_k]
        self.cache.put(key, hits)
        return hits

    # --- the answer ---------------------------------------------------------------------------

    def answer(self, query: str, history: Sequence[Message] = ()) -> Answer:
        final: Answer | None = None
        for event in self.stream(query, history):
            if event.kind == "done":
                final = event.answer
        assert final is not None
        return final

    def stream(self, query: str, history: Sequence[Message] = ()) -> Iterator[StreamEvent]:
        """Token events carrying only verified text, then one 'done' event with the Answer.

        The foreground count drops when the generator finishes or is closed (streaming closes
        it when the client goes away)."""
        with self.foreground.foreground():
            yield from self._stream(
                query, recent_turns(history, self.settings.generation.history_turns)
            )

    def _stream(self, query: str, history: list[Message]) -> Iterator[StreamEvent]:
        if self.assembler is None:
            self.warm_up()
        timer = StageTimer()
        with timer.stage("query"):
            processed = self.process(query, history)
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
        hits = self.search(processed, timer)
        g = self.settings.generation
        in_conversation = bool(history)
        conversation_gate = in_conversation and g.conversation_gate
        if hits and self.judge is not None and (conversation_gate or g.answerability):
            with timer.stage("answerability"):
                hits = self._judge_answerability(processed, hits, both_readings=conversation_gate)
        base.sources = hits
        if g.clarify:
            # A reading is a source the re-ranker lets through the single-question gate:
            # counting every source asked back 0.05 of SQuAD's questions (gold paragraph in the
            # index) and 0.12 of MTRAG's unanswerable turns; at 0.1, 0.01 and 0, for 0.09 of
            # the underspecified turns asked back instead of 0.23 (research/clarify_floor.py).
            floor = self.policy.refusal_threshold if self.reranker is not None else 0.0
            question = clarifying_question(processed.original, history, hits, min_rerank=floor)
            if question is not None:
                yield from self._finish(base, question, "clarify", timer)
                return
        reason = self.policy.gate(
            processed.text,
            hits,
            reranked=self.reranker is not None,
            judge_threshold=self.judge.threshold if self.judge and g.answerability else None,
            turn=processed.original,
            in_conversation=in_conversation,
        )
        if reason is not None:
            # In a conversation only: 0.15 of SQuAD's single questions ("What day was the game
            # played on?") read as underspecified out of their paragraph.
            ask = which_one(processed.original, history) if g.clarify and history else None
            if ask is not None and reason == "low_support":
                yield from self._finish(base, ask, "clarify", timer)
                return
            base.refused, base.refusal_reason = True, reason
            yield from self._finish(base, REFUSAL_TEXT, "refusal", timer)
            return
        assert self.assembler is not None
        with timer.stage("context"):
            context = self.assembler.assemble(processed.text, hits, history, focus=processed.focus)
        base.context_tokens = context.tokens
        yield from self._generate(processed, context, history, base, timer)

    def _reply_without_sources(
        self, base: Answer, in_conversation: bool, timer: StageTimer
    ) -> Iterator[StreamEvent]:
        if base.intent is Intent.OUT_OF_SCOPE:
            base.refused, base.refusal_reason = True, "out_of_scope"
            yield from self._finish(base, OUT_OF_SCOPE_REPLY, "refusal", timer)
        else:
            # Small talk inside a conversation ("This is impressive, right?") is answered as
            # such: a greeting would restart it, and a search would make a claim of it.
            reply = CONVERSATION_REPLY if in_conversation else CHITCHAT_REPLY
            yield from self._finish(base, reply, "reply", timer)

    def _judge_answerability(
        self, processed: ProcessedQuery, hits: list[Hit], *, both_readings: bool
    ) -> list[Hit]:
        """Attach the judge's P(answers the question) to the best few sources (the order stays
        retrieval's: re-ordering by the judge put the gold first less often, 0.79 vs 0.83).
        With ``both_readings``, the better of the standalone question and the user's words."""
        assert self.judge is not None
        n = self.settings.generation.answerability_candidates
        passages = [h.chunk.searchable_text for h in hits[:n]]
        probs = self.judge.score(processed.text, passages)
        if both_readings and processed.original != processed.text:
            own = self.judge.score(processed.original, passages)
            probs = [max(a, b) for a, b in zip(probs, own, strict=True)]
        # Not with_score: that would make the judge's probability the ranking score.
        scored = [
            replace(h, scores={**h.scores, "answerable": p})
            for h, p in zip(hits, probs, strict=False)
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
        assert self.generator is not None
        draft = VerifiedStream(
            self.policy,
            processed.text,
            context,
            quoted=self.generator.quotes_sources,
            turn=processed.original,
            resolved=processed.focus,
        )
        # The user's own words, with the history: asked the resolved turn instead, the reader
        # lost 4 of MTRAG's answers and the sample corpus's "Does HTTPS also work with SOCKS?"
        # (the rule took "it" for HTTPS, not the proxy). The resolution serves retrieval.
        pieces = self.generator.stream(processed.original, context, history)
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
            yield from self._finish(base, REFUSAL_TEXT, "refusal", timer)
            return
        base.citations = verdict.citations
        if rest:
            yield StreamEvent("token", text=rest)
        base.text, base.kind = verdict.text, "answer"
        base.timings = timer.done()
        yield StreamEvent("done", answer=base)

    @staticmethod
    def _finish(
        base: Answer, text: str, kind: AnswerKind, timer: StageTimer
    ) -> Iterator[StreamEvent]:
        """A reply decided without the reader's words: sent whole, as one token event."""
        base.text, base.kind = text, kind
        if base.refused:
            base.citations = []
        timer.mark("ttft")
        yield StreamEvent("token", text=text)
        base.timings = timer.done()
        yield StreamEvent("done", answer=base)
