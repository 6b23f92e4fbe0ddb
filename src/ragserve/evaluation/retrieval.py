"""Retrieval evaluation: every query of a BEIR split through the real retrieval path.

One run measures several configurations on the same index and queries (the ablation):
``bm25``, ``dense``, ``hybrid-rrf`` and ``hybrid-convex`` (each fusion alone), ``hybrid`` (what
the pipeline runs: the configured fusion with dense feedback), ``hybrid+rerank`` and the
query-expansion variants.
Chunks are mapped to their documents by first appearance (max-score aggregation), since BEIR
judges documents. For Recall@100, 100 fused candidates are retrieved; the re-ranker scores the
top ``rerank_candidates`` of them (as in production) and the rest keep their fused order.
Metrics come from ranx.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragserve.config import Settings
from ragserve.evaluation.beir import BeirDataset
from ragserve.retrieval.hybrid import HybridRetriever
from ragserve.types import Hit, ProcessedQuery

__all__ = [
    "ALL_STAGES",
    "StageResult",
    "configured_stage",
    "estimate_seconds",
    "evaluate_retrieval",
    "index_corpus",
    "ranx_metrics",
    "select_stages",
    "stage_retrievers",
]

ALL_STAGES = (
    "bm25",
    "dense",
    "hybrid-rrf",
    "hybrid-convex",
    "hybrid",
    "hybrid+expansion",
    "hybrid+rerank",
    "hybrid+expansion+rerank",
)
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
DEPTH = 100

# Rough costs on a 2-core CPU (README figures, unloaded), for the estimate printed before a run:
# ms per query for each retrieval, ms per first-time-ingested document (chunk + embed + index).
RETRIEVE_MS = {"sparse": 4.0, "dense": 25.0, "hybrid-rrf": 27.0, "hybrid-convex": 27.0}
RETRIEVE_MS["hybrid"] = 30.0
EXPANSION_MS = 20.0
INGEST_MS_PER_DOC = 20.0
# ms per (query, passage) pair the cross-encoder reads, by form: 14.7 pairs/s on PyTorch at 256
# tokens; the ONNX forms from the speed-ups benchmarks/bench_rerank.py --forms measured against
# it (fp32 1.2x, int8 with VNNI 1.9x).
RERANK_MS_PER_PAIR = {"torch": 68.0, "onnx-fp32": 58.0, "onnx-int8": 36.0}


def configured_stage(settings: Settings) -> str:
    """The ablation stage that is what the configured pipeline runs."""
    stage = (
        "hybrid"
        + ("+expansion" if settings.retrieval.query_expansion else "")
        + ("+rerank" if settings.rerank.enabled else "")
    )
    feedback = (
        settings.retrieval.dense_feedback_docs > 0 and settings.retrieval.dense_feedback_weight > 0
    )
    if stage == "hybrid" and not feedback:
        # Without feedback the pipeline's retrieval is its fusion alone, run under that name.
        stage = f"hybrid-{settings.retrieval.fusion}"
    return stage


def select_stages(spec: str | None, settings: Settings) -> tuple[str, ...]:
    """``None`` or "default": the cheap single-method baselines and the configured pipeline;
    "all": the whole ablation; otherwise the comma-separated stages named."""
    if spec is None or spec.strip() == "default":
        return tuple(dict.fromkeys(("bm25", "dense", configured_stage(settings))))
    if spec.strip() == "all":
        return ALL_STAGES
    return tuple(s.strip() for s in spec.split(",") if s.strip())


def estimate_seconds(
    stages: tuple[str, ...], settings: Settings, *, documents: int, queries: int
) -> tuple[float, float]:
    """(first-time ingestion, query loop) seconds, roughly: each retrieval is run once per query
    however many stages share it; every re-ranking stage scores rerank_candidates pairs."""
    modes = {s.split("+")[0] + ("+x" if "expansion" in s else "") for s in stages}
    per_query = sum(
        RETRIEVE_MS.get(m.removesuffix("+x").replace("bm25", "sparse"), 30.0)
        + (EXPANSION_MS if m.endswith("+x") else 0.0)
        for m in modes
    )
    reranks = sum("rerank" in s for s in stages)
    per_query += reranks * settings.rerank.rerank_candidates * _rerank_ms_per_pair(settings)
    return documents * INGEST_MS_PER_DOC / 1000, queries * per_query / 1000


def _rerank_ms_per_pair(settings: Settings) -> float:
    from ragserve.rerank.onnx_export import preferred_precision
    from ragserve.runtime.cpu import cpu_flags

    runtime: str = settings.rerank.rerank_runtime
    if runtime == "auto":
        runtime = f"onnx-{preferred_precision(cpu_flags())}"
    per_pair = RERANK_MS_PER_PAIR.get(runtime, RERANK_MS_PER_PAIR["torch"])
    # Sentence runs read the whole candidate, a run at a time: about one full-length pair's work.
    window = 0 if settings.rerank.rerank_sentences else settings.rerank.rerank_window
    # Attention and padding make cost grow a little faster than length; linear is close enough.
    length = (
        min(window, settings.rerank.rerank_max_length)
        if window
        else settings.rerank.rerank_max_length
    )
    return per_pair * length / 256


@dataclass(slots=True)
class StageResult:
    stage: str
    metrics: dict[str, float]
    per_query_ndcg: dict[str, float]
    latency_ms: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(v, 4) for k, v in self.metrics.items()}
        total = (
            [sum(v) for v in zip(*self.latency_ms.values(), strict=True)] if self.latency_ms else []
        )
        if total:
            out["p50_ms"] = round(float(np.percentile(total, 50)), 2)
            out["p95_ms"] = round(float(np.percentile(total, 95)), 2)
        out["stage_ms"] = {
            k: {
                "p50": round(float(np.percentile(v, 50)), 2),
                "p95": round(float(np.percentile(v, 95)), 2),
            }
            for k, v in self.latency_ms.items()
        }
        return out


def ranx_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """ranx metrics over the queries in qrels; queries with no results score 0."""
    from ranx import Qrels, Run, evaluate

    full_run = {q: (run.get(q) or {"__none__": 0.0}) for q in qrels}
    scores = evaluate(Qrels(qrels), Run(full_run), list(METRICS), return_mean=False)
    means = {m: float(np.mean(scores[m])) for m in METRICS}
    per_query = dict(zip(list(qrels), map(float, scores["ndcg@10"]), strict=True))
    return means, per_query


def _to_docs(hits: list[Hit]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rank, hit in enumerate(hits):
        out.setdefault(hit.chunk.doc_id, float(DEPTH * 10 - rank))
    return out


def evaluate_retrieval(
    settings: Settings,
    dataset: BeirDataset,
    *,
    stages: tuple[str, ...] = ALL_STAGES,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, StageResult]:
    from ragserve.pipeline import RagPipeline

    _check_stages(stages)
    wants_rerank = any("rerank" in s for s in stages)
    pipeline = RagPipeline(settings.replace(rerank=wants_rerank and settings.rerank.enabled))
    pipeline.warm_up(generation=False)
    index_corpus(pipeline, dataset, progress)
    run = _StageRunner(pipeline, settings, stages, wants_rerank)
    qids = sorted(dataset.qrels)[: limit or None]
    bar = _bar(len(qids), progress)
    for qid in qids:
        run.query(qid, dataset.queries[qid])
        bar.update(1)
    bar.close()
    qrels = {q: dataset.qrels[q] for q in qids}
    results = {}
    for stage in stages:
        means, per_query = ranx_metrics(qrels, run.runs[stage])
        results[stage] = StageResult(stage, means, per_query, run.latency[stage])
    pipeline.close()
    return results


def _check_stages(stages: tuple[str, ...]) -> None:
    unknown = set(stages) - set(ALL_STAGES)
    if unknown:
        from ragserve.errors import BadRequestError

        raise BadRequestError(
            f"Unknown stages: {', '.join(sorted(unknown))}.",
            hint="Choose from " + ", ".join(ALL_STAGES) + ".",
        )


def index_corpus(pipeline: Any, dataset: BeirDataset, progress: bool) -> None:
    from ragserve.ingest.loaders import iter_beir_corpus
    from ragserve.ingest.pipeline import Ingestor

    Ingestor(pipeline.settings, pipeline.index, pipeline.embedder).ingest_documents(
        iter_beir_corpus(dataset.corpus_path),
        total=dataset.corpus_size,
        progress=progress,
        label="documents",
    )


class _StageRunner:
    """Runs every stage of the ablation for one query at a time, timing each part."""

    def __init__(
        self, pipeline: Any, settings: Settings, stages: tuple[str, ...], wants_rerank: bool
    ) -> None:
        from ragserve.query.processor import RuleBasedQueryProcessor
        from ragserve.rerank.cross_encoder import CrossEncoderReranker

        self.pipeline, self.stages = pipeline, stages
        self.reranker = pipeline.reranker
        if self.reranker is None and wants_rerank:
            self.reranker = CrossEncoderReranker.from_settings(settings)
            self.reranker.warm_up()
        self.n_rerank = settings.rerank.rerank_candidates
        self.plain = RuleBasedQueryProcessor(
            condense_history=False, expansion=False, intent_detection=False
        )
        self.expand = RuleBasedQueryProcessor(
            condense_history=False, expansion=True, intent_detection=False
        )
        self.retrievers = stage_retrievers(pipeline, settings)
        self.runs: dict[str, dict[str, dict[str, float]]] = {s: {} for s in stages}
        self.latency: dict[str, dict[str, list[float]]] = {s: {} for s in stages}

    def query(self, qid: str, text: str) -> None:
        # Stages that share a retrieval (e.g. hybrid and hybrid+rerank) retrieve once.
        cache: dict[str, tuple[list[Hit], float, float]] = {}
        for stage in self.stages:
            lat = self.latency[stage]
            processor = self.expand if "expansion" in stage else self.plain
            t0 = time.perf_counter()
            pq: ProcessedQuery = processor.process(text)
            t_query = (time.perf_counter() - t0) * 1000
            mode = {"bm25": "sparse"}.get(stage.split("+")[0], stage.split("+")[0])
            key = f"{mode}:{'x' if 'expansion' in stage else ''}"
            if key not in cache:
                self.pipeline.embedder.clear_cache()  # time the real embedding, not a cache hit
                t0 = time.perf_counter()
                hits = self.retrievers[mode].retrieve(pq, DEPTH)
                cache[key] = (hits, t_query, (time.perf_counter() - t0) * 1000)
            hits, t_query, t_retrieve = cache[key]
            lat.setdefault("query", []).append(t_query)
            lat.setdefault("retrieve", []).append(t_retrieve)
            if "rerank" in stage:
                hits = self._rerank(pq.text, hits, lat)
            self.runs[stage][qid] = _to_docs(hits)

    def _rerank(self, query: str, hits: list[Hit], lat: dict[str, list[float]]) -> list[Hit]:
        assert self.reranker is not None
        n = self.n_rerank
        t0 = time.perf_counter()
        head = self.reranker.rerank(query, hits[:n], n)
        lat.setdefault("rerank", []).append((time.perf_counter() - t0) * 1000)
        return head + hits[n:]


def stage_retrievers(pipeline: Any, settings: Settings) -> dict[str, HybridRetriever]:
    # overfetch 1: every side fetches DEPTH (or fusion_depth, if deeper) candidates.
    eval_settings = settings.replace(overfetch=1)
    return {
        name: HybridRetriever.from_settings(
            pipeline.index,
            pipeline.embedder,
            eval_settings,
            mode=mode,
            fusion=fusion,
            feedback=feedback,
        )
        for name, mode, fusion, feedback in (
            ("sparse", "sparse", None, False),
            ("dense", "dense", None, False),
            ("hybrid-rrf", "hybrid", "rrf", False),
            ("hybrid-convex", "hybrid", "convex", False),
            ("hybrid", "hybrid", None, True),
        )
    }


class _Null:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def _bar(total: int, enabled: bool) -> Any:
    if not enabled or os.environ.get("RAGSERVE_NO_PROGRESS"):
        return _Null()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="query", desc="eval queries", dynamic_ncols=True)
