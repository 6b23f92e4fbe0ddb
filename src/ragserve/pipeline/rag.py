"""RagPipeline: the components of the five stages, built from settings and loaded once.

Construction is cheap; ``warm_up`` loads models, and every method after that is safe to call
from worker threads. The order of the stages for one answer is ``pipeline.answering``'s;
what is accepted or refused is decided in ``grounding.policy`` only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ragserve.config import Settings
from ragserve.embedding.embedder import SentenceTransformerEmbedder, open_index_with
from ragserve.grounding.policy import AnswerPolicy
from ragserve.pipeline.answering import (
    CHITCHAT_REPLY,
    CONVERSATION_REPLY,
    OUT_OF_SCOPE_REPLY,
    AnswerFlow,
    StreamEvent,
)
from ragserve.pipeline.cache import SearchCache
from ragserve.pipeline.timing import StageTimer
from ragserve.query.processor import RuleBasedQueryProcessor
from ragserve.retrieval.hybrid import HybridRetriever
from ragserve.runtime.admission import AnswerAdmission
from ragserve.runtime.priority import ForegroundGate
from ragserve.stores import open_index
from ragserve.stores.base import DocumentIndex
from ragserve.types import Answer, Hit, Message, ProcessedQuery

if TYPE_CHECKING:
    from ragserve.context.assembler import ContextAssemblerProtocol
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
        self.flow = AnswerFlow(self)
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
        self.admission.limit = generator.max_in_flight
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
        if self.assembler is None:
            self.warm_up()
        with self.foreground.foreground():
            turns = recent_turns(history, self.settings.generation.history_turns)
            yield from self.flow.run(query, turns)
