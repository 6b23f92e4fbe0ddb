"""RagPipeline: the five stages of the seed, run in order, each timed.

    question (+history) -> 1 process -> 2 retrieve (dense || sparse -> RRF) -> 3 rerank
                        -> 4 assemble context -> 5 generate (stream) -> answer + citations

Models load once in ``warm_up``; every method after that is safe to call from worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragserve.config import Settings
from ragserve.embedding import SentenceTransformerEmbedder, open_index_with
from ragserve.generation.support import SentenceSupport
from ragserve.query import RuleBasedQueryProcessor
from ragserve.retrieval import HybridRetriever
from ragserve.stores.base import DocumentIndex, open_index
from ragserve.types import Answer, Hit, Intent, Message, ProcessedQuery

if TYPE_CHECKING:
    from ragserve.context import AssembledContext
    from ragserve.rerank import Reranker

__all__ = ["CHITCHAT_REPLY", "OUT_OF_SCOPE_REPLY", "RagPipeline", "StreamEvent"]

log = logging.getLogger("ragserve.pipeline")

CHITCHAT_REPLY = (
    "Hello! I answer questions about the documents in this knowledge base, with sources. "
    "What would you like to know?"
)
OUT_OF_SCOPE_REPLY = "I can only answer questions about the documents in this knowledge base."
# Calibrated on held-out SQuAD-dev questions with and without their gold paragraph indexed
# (benchmarks/calibrate_refusal.py): below this best re-rank probability the documents almost
# never contain the answer.
DEFAULT_REFUSAL_THRESHOLD = 0.05


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: str
    """'token' (``text`` set) or 'done' (``answer`` set)."""
    text: str = ""
    answer: Answer | None = None


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = (time.perf_counter() - self.started) * 1000
        self.timer.timings[self.name] = self.timer.timings.get(self.name, 0.0) + elapsed


class RagPipeline:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        index: DocumentIndex | None = None,
        embedder: SentenceTransformerEmbedder | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.embedder = embedder or SentenceTransformerEmbedder.from_settings(self.settings)
        self.index: DocumentIndex = index or open_index(self.settings)
        s = self.settings
        self.query_processor = RuleBasedQueryProcessor(
            condense_history=s.condense_history,
            expansion=s.query_expansion,
            intent_detection=s.intent_detection,
        )
        self.retriever = HybridRetriever.from_settings(self.index, self.embedder, s)
        self.reranker: Reranker | None = None
        self.support = SentenceSupport()
        self.generator: Any = None
        self.assembler: Any = None
        self._warm = False
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], list[Hit]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def warm_up(self, *, generation: bool = True) -> None:
        with self._lock:
            if self._warm:
                return
            self.embedder.warm_up()
            open_index_with(self.index, self.embedder)
            if self.settings.rerank:
                from ragserve.rerank import CrossEncoderReranker

                reranker = CrossEncoderReranker.from_settings(self.settings)
                reranker.warm_up()
                self.reranker = reranker
            if generation:
                from ragserve.context import ContextAssembler
                from ragserve.generation import build_generator

                self.generator = build_generator(self.settings)
                self.generator.warm_up()
                s = self.settings
                self.assembler = ContextAssembler(
                    self.generator.count_tokens,
                    context_window=self.generator.context_window,
                    system=s.budget_system,
                    context=s.budget_context,
                    query=s.budget_query,
                    response=s.budget_response,
                )
            self._warm = True

    def close(self) -> None:
        self.index.close()

    @property
    def refusal_threshold(self) -> float:
        t = self.settings.refusal_threshold
        return DEFAULT_REFUSAL_THRESHOLD if t is None else t

    # --- stages 1-3 ---------------------------------------------------------------------------

    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery:
        return self.query_processor.process(query, history)

    def search(
        self, query: ProcessedQuery, timer: _Timer | None = None, *, top_k: int | None = None
    ) -> list[Hit]:
        """Retrieve and re-rank; cached per (query, index version)."""
        timer = timer or _Timer()
        top_k = top_k or self.settings.top_k
        key = (query.text, query.expansions, top_k, self.index.info().version)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return list(cached)
            self.cache_misses += 1
        candidates = self.settings.rerank_candidates if self.reranker else top_k
        with timer.stage("retrieve"):
            hits = self.retriever.retrieve(query, max(candidates, top_k))
        if self.reranker is not None:
            with timer.stage("rerank"):
                hits = self.reranker.rerank(query.text, hits, top_k)
        else:
            hits = hits[:top_k]
        with self._lock:
            self._cache[key] = list(hits)
            if len(self._cache) > 1024:
                self._cache.popitem(last=False)
        return hits

    # --- full answer --------------------------------------------------------------------------

    def _low_confidence(self, query: str, hits: Sequence[Hit]) -> bool:
        """The retrieval-confidence gate: refuse without calling the generator.

        Two signals: the retrieval score (re-rank probability, or without a re-ranker the best
        dense cosine) and the lexical support of the best source sentence. The second catches
        the common miss where the sources are on topic but do not hold the answer.
        """
        if self.reranker is not None:
            if max(h.scores.get("rerank", 0.0) for h in hits) < self.refusal_threshold:
                return True
        else:
            dense = [h.scores["dense"] for h in hits if "dense" in h.scores]
            if dense and max(dense) < self.settings.dense_refusal_threshold:
                return True
        minimum = self.settings.min_support
        return minimum > 0 and self.support.best(query, [h.chunk.text for h in hits]) < minimum

    def answer(self, query: str, history: Sequence[Message] = ()) -> Answer:
        final: Answer | None = None
        for event in self.stream(query, history):
            if event.kind == "done":
                final = event.answer
        assert final is not None
        return final

    def stream(self, query: str, history: Sequence[Message] = ()) -> Iterator[StreamEvent]:
        """Token events as generation produces them, then one 'done' event with the Answer."""
        if not self._warm:
            self.warm_up()
        started = time.perf_counter()
        timer = _Timer()
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
            base.text = (
                CHITCHAT_REPLY if processed.intent is Intent.CHITCHAT else OUT_OF_SCOPE_REPLY
            )
            base.refused = processed.intent is Intent.OUT_OF_SCOPE
            yield StreamEvent("token", text=base.text)
            yield self._done(base, timer, started)
            return
        hits = self.search(processed, timer)
        base.sources = hits
        if not hits or self._low_confidence(processed.text, hits):
            from ragserve.generation.citations import REFUSAL_TEXT

            base.text, base.refused = REFUSAL_TEXT, True
            yield StreamEvent("token", text=base.text)
            yield self._done(base, timer, started)
            return
        with timer.stage("context"):
            context = self.assembler.assemble(
                processed.text, hits, list(history)[-2 * self.settings.history_turns :]
            )
        yield from self._generate(processed, context, history, base, timer, started)

    def _generate(
        self,
        processed: ProcessedQuery,
        context: AssembledContext,
        history: Sequence[Message],
        base: Answer,
        timer: _Timer,
        started: float,
    ) -> Iterator[StreamEvent]:
        from ragserve.generation.citations import REFUSAL_TEXT, is_refusal, validate_citations

        pieces: list[str] = []
        gen_started = time.perf_counter()
        with timer.stage("generate"):
            for piece in self.generator.stream(processed.original, context, list(history)):
                if not pieces:
                    timer.timings["ttft"] = (time.perf_counter() - started) * 1000
                pieces.append(piece)
                yield StreamEvent("token", text=piece)
        timer.timings["generate"] = (time.perf_counter() - gen_started) * 1000
        raw = "".join(pieces).strip()
        with timer.stage("citations"):
            text, citations, invalid = validate_citations(raw, context)
        base.sources = context.sources
        base.text, base.citations, base.invalid_citations = text, citations, invalid
        if not text or is_refusal(text):
            base.text, base.refused, base.citations = REFUSAL_TEXT, True, []
        yield self._done(base, timer, started)

    @staticmethod
    def _done(answer: Answer, timer: _Timer, started: float) -> StreamEvent:
        timer.timings["total"] = (time.perf_counter() - started) * 1000
        answer.timings = {k: round(v, 2) for k, v in timer.timings.items()}
        return StreamEvent("done", answer=answer)
