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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragserve.config import Settings
from ragserve.embedding.embedder import SentenceTransformerEmbedder, open_index_with
from ragserve.query.processor import RuleBasedQueryProcessor
from ragserve.retrieval.hybrid import HybridRetriever
from ragserve.runtime.priority import ForegroundGate
from ragserve.stores import open_index
from ragserve.stores.base import DocumentIndex
from ragserve.text.sentences import CODE_FENCES
from ragserve.text.support import SentenceSupport
from ragserve.types import Answer, Citation, Hit, Intent, Message, ProcessedQuery

if TYPE_CHECKING:
    from ragserve.context.assembler import AssembledContext
    from ragserve.generation.base import Generator
    from ragserve.grounding.answerability import AnswerabilityJudge
    from ragserve.ingest.pipeline import Ingestor, IngestSummary
    from ragserve.rerank.cross_encoder import Reranker

__all__ = ["CHITCHAT_REPLY", "OUT_OF_SCOPE_REPLY", "RagPipeline", "StreamEvent"]

log = logging.getLogger("ragserve.pipeline")

CHITCHAT_REPLY = (
    "Hello! I answer questions about the documents in this knowledge base, with sources. "
    "What would you like to know?"
)
OUT_OF_SCOPE_REPLY = "I can only answer questions about the documents in this knowledge base."
# Set on 300 SQuAD training-article questions with and without their gold paragraph among the
# candidates (the default re-ranker; docs/eval/rerank-default): with the lexical support gate,
# 0.1 refuses about as many answerable questions as the dense-cosine gate does without a
# re-ranker (0.120-0.127 against 0.120; int8 scores move a little with their batch-mates) and
# more unanswerable ones (0.573-0.577 against 0.493).
DEFAULT_REFUSAL_THRESHOLD = 0.1


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
        self.settings = settings or Settings()
        self.embedder = embedder or SentenceTransformerEmbedder.from_settings(self.settings)
        self.index: DocumentIndex = index or open_index(self.settings)
        s = self.settings
        self.query_processor = RuleBasedQueryProcessor(
            condense_history=s.retrieval.condense_history,
            expansion=s.retrieval.query_expansion,
            intent_detection=s.retrieval.intent_detection,
        )
        self.retriever = HybridRetriever.from_settings(self.index, self.embedder, s)
        self.reranker: Reranker | None = reranker
        self.judge: AnswerabilityJudge | None = judge
        self.support = SentenceSupport()
        self.generator: Generator | None = generator
        self.assembler: Any = None
        self._ingestor: Ingestor | None = None
        self._warm = False
        self._lock = threading.Lock()
        # Answers and searches in flight: ingestion in the same process yields to them.
        self.foreground = ForegroundGate()
        self._cache: OrderedDict[tuple[Any, ...], list[Hit]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def warm_up(self, *, generation: bool = True) -> None:
        with self._lock:
            if not generation or self.assembler is not None:
                self._warm_retrieval()
                return
            # The reader and the retrieval models load independently, and a first start does
            # slow work on both sides (joining the reader's GGUF parts, exporting the
            # re-ranker to ONNX): side by side, not one after the other.
            with ThreadPoolExecutor(max_workers=1) as pool:
                reader = pool.submit(self._warm_generation)
                self._warm_retrieval()
                self._prime_search()
                reader.result()

    def _warm_retrieval(self) -> None:
        if self._warm:
            return
        self.embedder.warm_up()
        open_index_with(self.index, self.embedder)
        if self.reranker is None and self.settings.rerank.enabled:
            from ragserve.rerank.cross_encoder import CrossEncoderReranker

            self.reranker = CrossEncoderReranker.from_settings(self.settings)
        if self.reranker is not None:
            self.reranker.warm_up()
        self._warm = True

    def _prime_search(self) -> None:
        """One throwaway search through retrieval and re-ranking, while the reader loads.

        A runtime's first inference (kernel selection, buffer allocation) and the vector
        index's first read from disk made the first question after start-up about 150 ms slower
        in retrieval and re-ranking than the next; a server should pay that before it is ready,
        not on its first user. A failure here only costs that, so it is logged, not raised.
        """
        try:
            query = self.process("how is it configured?")
            hits = self.retriever.retrieve(query, self.settings.rerank.rerank_candidates)
            if self.reranker is not None and hits:
                self.reranker.rerank(query.text, hits, len(hits))
        except Exception as exc:  # an optimisation: never the reason a start-up fails
            log.warning("priming search at start-up failed (%s); the first query pays it", exc)

    def _warm_generation(self) -> None:
        from ragserve.context.assembler import (
            CompactContextAssembler,
            ContextAssembler,
            FocusedContextAssembler,
        )
        from ragserve.generation import build_generator

        s = self.settings
        if self.judge is None and s.generation.answerability:
            from ragserve.grounding.answerability import AnswerabilityJudge

            self.judge = AnswerabilityJudge.from_settings(s)
        if self.judge is not None:
            self.judge.warm_up()
        generator = self.generator or build_generator(s)
        generator.warm_up()
        self.generator = generator
        style = s.generation.context_style
        if style == "auto":
            style = "compact" if s.generation.generator == "llama" else "full"
        if style == "focused":
            self.assembler = FocusedContextAssembler(
                generator.count_tokens,
                sentences=s.generation.context_sentences,
                grow=s.generation.context_grow,
                budget=s.generation.context_budget,
                max_sources=s.generation.context_sources,
                context_window=generator.context_window,
            )
        elif style == "compact":
            self.assembler = CompactContextAssembler(
                generator.count_tokens,
                budget=s.generation.context_budget,
                max_sources=s.generation.context_sources,
                context_window=generator.context_window,
            )
        else:
            self.assembler = ContextAssembler(
                generator.count_tokens,
                context_window=generator.context_window,
                system=s.generation.budget_system,
                context=s.generation.budget_context,
                query=s.generation.budget_query,
                response=s.generation.budget_response,
            )

    def ingest(
        self, paths: Sequence[str | Path], *, prune: bool = False, progress: bool = False
    ) -> IngestSummary:
        """Add or update files and directories in this pipeline's index.

        Unchanged files are skipped (content hashes); ``prune`` also drops documents whose
        files under the given directories are gone. Answers reflect the new index at once.
        """
        from ragserve.ingest.pipeline import Ingestor

        self.warm_up(generation=False)
        if self._ingestor is None:
            self._ingestor = Ingestor(self.settings, self.index, self.embedder)
        return self._ingestor.ingest_paths([Path(p) for p in paths], prune=prune, progress=progress)

    def check_capacity(self) -> None:
        """Raise GenerationBusyError now if the generator's queue is full (503 before a
        stream opens, rather than an error event after it has)."""
        slots = getattr(self.generator, "slots", None)
        if slots is not None:
            slots.check()

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> RagPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def refusal_threshold(self) -> float:
        t = self.settings.generation.refusal_threshold
        return DEFAULT_REFUSAL_THRESHOLD if t is None else t

    # --- stages 1-3 ---------------------------------------------------------------------------

    def process(self, query: str, history: Sequence[Message] = ()) -> ProcessedQuery:
        return self.query_processor.process(query, history)

    def search(
        self, query: ProcessedQuery, timer: _Timer | None = None, *, top_k: int | None = None
    ) -> list[Hit]:
        """Retrieve and re-rank; cached per (query, index version)."""
        with self.foreground.foreground():
            return self._search(query, timer or _Timer(), top_k)

    def _search(self, query: ProcessedQuery, timer: _Timer, top_k: int | None) -> list[Hit]:
        top_k = top_k or self.settings.retrieval.top_k
        key = (query.text, query.expansions, top_k, self.index.version())
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return list(cached)
            self.cache_misses += 1
        candidates = self.settings.rerank.rerank_candidates if self.reranker else top_k
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
        if self.judge is not None and "answerable" in hits[0].scores:
            best = max(h.scores.get("answerable", 0.0) for h in hits)
            if best < self.judge.threshold:
                return True
        elif self.reranker is not None:
            if max(h.scores.get("rerank", 0.0) for h in hits) < self.refusal_threshold:
                return True
        else:
            dense = [h.scores["dense"] for h in hits if "dense" in h.scores]
            if dense and max(dense) < self.settings.generation.dense_refusal_threshold:
                return True
        minimum = self.settings.generation.min_support
        if minimum <= 0:
            return False
        best = hits[: self.settings.generation.support_sources]
        return self.support.best(query, [h.chunk.text for h in best]) < minimum

    def _judge_answerability(self, query: str, hits: list[Hit]) -> list[Hit]:
        """Attach the judge's P(answers the question) to the best few sources.

        The order stays retrieval's: on held-out SQuAD articles re-ordering by the judge put
        the gold paragraph first less often than retrieval did (0.79 vs 0.83).
        """
        assert self.judge is not None
        n = self.settings.generation.answerability_candidates
        probs = self.judge.score(query, [h.chunk.searchable_text for h in hits[:n]])
        # Not with_score: that would make the judge's probability the ranking score.
        scored = [
            replace(h, scores={**h.scores, "answerable": p})
            for h, p in zip(hits, probs, strict=False)
        ]
        return scored + hits[len(scored) :]

    def answer(self, query: str, history: Sequence[Message] = ()) -> Answer:
        final: Answer | None = None
        for event in self.stream(query, history):
            if event.kind == "done":
                final = event.answer
        assert final is not None
        return final

    def stream(self, query: str, history: Sequence[Message] = ()) -> Iterator[StreamEvent]:
        """Token events as generation produces them, then one 'done' event with the Answer."""
        # The count drops when the generator finishes or is closed (streaming closes it when
        # the client goes away); a dropped, never-closed generator leaves it up only until
        # it is collected, and the gate's waits are bounded either way.
        with self.foreground.foreground():
            yield from self._stream(query, history)

    def _stream(self, query: str, history: Sequence[Message]) -> Iterator[StreamEvent]:
        if self.assembler is None:
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
            base.refusal_reason = "out_of_scope" if base.refused else None
            yield StreamEvent("token", text=base.text)
            yield self._done(base, timer, started)
            return
        hits = self.search(processed, timer)
        if hits and self.judge is not None:
            with timer.stage("answerability"):
                hits = self._judge_answerability(processed.text, hits)
        base.sources = hits
        if not hits or self._low_confidence(processed.text, hits):
            from ragserve.generation.citations import REFUSAL_TEXT

            base.text, base.refused = REFUSAL_TEXT, True
            base.refusal_reason = "low_support" if hits else "no_sources"
            yield StreamEvent("token", text=base.text)
            yield self._done(base, timer, started)
            return
        with timer.stage("context"):
            context = self.assembler.assemble(
                processed.text, hits, list(history)[-2 * self.settings.generation.history_turns :]
            )
        base.context_tokens = context.tokens
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
        reason = "model" if not raw or is_refusal(raw) else None
        with timer.stage("citations"):
            text, citations, invalid = validate_citations(raw, context)
            # Extractive answers are source sentences by construction; only a model's own
            # words need checking against the sources.
            quoted = getattr(self.generator, "name", "") == "extractive"
            if not quoted and text and not is_refusal(text):
                text, citations, reason = self._verified(processed.text, text, citations, context)
        base.sources = context.sources
        base.text, base.citations, base.invalid_citations = text, citations, invalid
        if not text or is_refusal(text):
            base.text, base.refused, base.citations = REFUSAL_TEXT, True, []
            base.refusal_reason = reason or "model"
        yield self._done(base, timer, started)

    def _verified(
        self, question: str, text: str, citations: list[Citation], context: AssembledContext
    ) -> tuple[str, list[Citation], str | None]:
        """A model's answer after the two checks on its words, with the reason if refused.

        Grounding: its words must come from a source. Verification: the source sentence they
        come from must be about this question (an on-topic source answers a neighbouring one).
        A how-to answer that passes both gets the code its cited source shows for its steps.
        """
        from ragserve.generation.citations import strip_markers

        generation = self.settings.generation
        if generation.verify_grounding:
            text, citations = self._grounded(question, text, citations, context)
            if not text:
                return "", [], "unsupported"
        minimum = generation.min_answer_coverage
        if minimum > 0 and (
            self.support.answer_coverage(question, strip_markers(text), context.texts) < minimum
        ):
            return "", [], "unverified"
        if generation.show_code:
            from ragserve.grounding.show_code import attach_code

            cited = [c.number for c in citations]
            text = attach_code(text, context.texts, cited, self.support, question=question)
        return text, citations, None

    @staticmethod
    def _grounded(
        question: str, text: str, citations: list[Citation], context: AssembledContext
    ) -> tuple[str, list[Citation]]:
        """The answer with citations to the sources that hold its words, or no answer; a tail
        of sentences no source supports is dropped rather than the whole answer."""
        from ragserve.generation.citations import (
            ground,
            strip_markers,
            supported_prefix,
            validate_citations,
        )

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
        bare = strip_markers(text)
        # After a code block a marker needs a line of its own, or it would join the fence.
        gap = "\n\n" if bare.endswith(CODE_FENCES) else " "
        recited, fixed, _ = validate_citations(
            bare + gap + "".join(f"[{n}]" for n in numbers), context
        )
        return recited, fixed

    @staticmethod
    def _done(answer: Answer, timer: _Timer, started: float) -> StreamEvent:
        timer.timings["total"] = (time.perf_counter() - started) * 1000
        answer.timings = {k: round(v, 2) for k, v in timer.timings.items()}
        return StreamEvent("done", answer=answer)
