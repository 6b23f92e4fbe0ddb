"""Evaluation wiring: ranx metrics on a hand-checkable set, dataset validation, end to end CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragserve.config import Settings
from ragserve.errors import DatasetError
from ragserve.evaluation.answers import normalize_answer, squad_f1, subsample
from ragserve.evaluation.beir import load_beir
from ragserve.evaluation.retrieval import (
    ALL_STAGES,
    estimate_seconds,
    ranx_metrics,
    select_stages,
)


@pytest.mark.fast
def test_metrics_match_hand_computation() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 2, "d4": 1}}
    run = {"q1": {"d2": 3.0, "d1": 2.0}, "q2": {"d3": 5.0, "d9": 4.0, "d4": 3.0}}
    means, per_query = ranx_metrics(qrels, run)
    # q1: relevant at rank 2 -> nDCG = (1/log2(3)) / 1 ; MRR = 1/2
    q1 = 1 / math.log2(3)
    # q2 (graded, linear gains as trec_eval and so BEIR use): DCG = 2/1 + 1/log2(4);
    # IDCG = 2 + 1/log2(3)
    q2 = (2 + 1 / 2) / (2 + 1 / math.log2(3))
    assert per_query["q1"] == pytest.approx(q1, abs=1e-4)
    assert per_query["q2"] == pytest.approx(q2, abs=1e-4)
    assert means["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert means["recall@10"] == pytest.approx(1.0)


@pytest.mark.fast
def test_query_without_results_scores_zero() -> None:
    means, per_query = ranx_metrics({"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": {"d1": 1.0}})
    assert per_query["q2"] == 0.0 and means["ndcg@10"] == pytest.approx(0.5)


def _beir(
    tmp_path: Path, qrels: str = "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq2\td2\t1\r\n"
) -> Path:
    (tmp_path / "qrels").mkdir(parents=True)
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps(
            {"_id": "d1", "title": "Zebra stripes", "text": "Zebras have black and white stripes."}
        )
        + "\n"
        + json.dumps(
            {
                "_id": "d2",
                "title": "Penguin colonies",
                "text": "Penguins breed in large colonies on ice.",
            }
        )
        + "\n"
        + json.dumps(
            {"_id": "d3", "title": "Volcanoes", "text": "Lava flows from erupting volcanoes."}
        )
        + "\n"
    )
    (tmp_path / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "why do zebras have stripes"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "where do penguins breed"})
        + "\n"
    )
    (tmp_path / "qrels" / "test.tsv").write_text(qrels)
    return tmp_path


@pytest.mark.fast
def test_dataset_errors_name_file_and_line(tmp_path: Path) -> None:
    folder = _beir(tmp_path / "a", "query-id\tcorpus-id\tscore\r\nq1\tnope\t1\r\n")
    with pytest.raises(DatasetError, match=r"test.tsv:2: corpus id 'nope'"):
        load_beir(folder)
    with pytest.raises(DatasetError, match="Missing file"):
        load_beir(folder, split="dev")
    empty = _beir(tmp_path / "b")
    (empty / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": " "})
        + "\n"
        + json.dumps({"_id": "q2", "text": "x"})
        + "\n"
    )
    with pytest.raises(DatasetError, match="empty"):
        load_beir(empty)


@pytest.mark.fast
def test_squad_normalisation_and_f1() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert squad_f1("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(
        2 * (2 / 4) * 1 / (2 / 4 + 1)
    )


def test_eval_retrieval_cli_end_to_end(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ragserve.cli.main import app

    folder = _beir(tmp_path / "tiny")
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "idx"))
    monkeypatch.delenv("RAGSERVE_NO_PROGRESS", raising=False)  # --json must still show it
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "retrieval",
            "--dataset",
            str(folder),
            "--stages",
            "bm25,dense,hybrid",
            "--json",
            "--report",
            str(tmp_path / "rep"),
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert {"ndcg@10", "recall@10", "recall@100", "mrr@10", "p50_ms", "p95_ms", "queries"} <= set(
        body
    )
    assert body["queries"] == 2 and body["pipeline"] == "hybrid"
    assert body["ndcg@10"] == pytest.approx(1.0)
    assert set(body["ablation"]) == {"bm25", "dense", "hybrid"}
    assert (tmp_path / "rep" / "report.md").exists() and (
        tmp_path / "rep" / "quality_latency.png"
    ).exists()
    # The estimate goes to stderr, before the run, and keeps stdout one JSON object.
    assert "evaluating bm25, dense, hybrid on 2 queries: about" in result.stderr
    # Progress too goes to stderr under --json: a long run is not silent.
    assert "eval queries" in result.stderr and "ingest" in result.stderr


def test_default_stages_are_the_cheap_baselines_and_the_configured_pipeline() -> None:
    plain = Settings(rerank=False)
    assert select_stages(None, plain) == ("bm25", "dense", "hybrid")
    assert select_stages("default", plain) == ("bm25", "dense", "hybrid")
    assert select_stages(None, Settings()) == ("bm25", "dense", "hybrid+rerank")  # re-ranking on
    both = Settings(rerank=True, query_expansion=True)
    assert select_stages(None, both) == ("bm25", "dense", "hybrid+expansion+rerank")
    no_feedback = Settings(rerank=False, dense_feedback_docs=0, fusion="rrf")
    assert select_stages(None, no_feedback) == ("bm25", "dense", "hybrid-rrf")
    assert select_stages("all", plain) == ALL_STAGES
    assert select_stages(" bm25, hybrid+rerank ,", plain) == ("bm25", "hybrid+rerank")


def test_estimate_grows_with_stages_queries_and_reranking() -> None:
    s = Settings(rerank=False)
    ingest, cheap = estimate_seconds(select_stages(None, s), s, documents=5183, queries=300)
    _, everything = estimate_seconds(ALL_STAGES, s, documents=5183, queries=300)
    _, half = estimate_seconds(select_stages(None, s), s, documents=5183, queries=150)
    on = Settings()
    _, default = estimate_seconds(select_stages(None, on), on, documents=5183, queries=300)
    assert 0 < cheap < 60 < everything  # minutes of re-ranking vs seconds of retrieval
    assert cheap < default < everything  # the default pipeline re-ranks its top 5 only
    assert half == pytest.approx(cheap / 2) and ingest > 0
    whole = {"rerank_runtime": "torch", "rerank_sentences": 0}
    _, torch = estimate_seconds(("hybrid+rerank",), Settings(**whole), documents=1, queries=300)
    _, windowed = estimate_seconds(
        ("hybrid+rerank",), Settings(**whole, rerank_window=128), documents=1, queries=300
    )
    assert windowed < torch


def test_quality_latency_chart_is_written_with_a_readable_quality_axis(tmp_path: Path) -> None:
    import matplotlib.image

    from ragserve.evaluation.report import quality_latency_chart, write_report
    from ragserve.evaluation.retrieval import StageResult

    def stage(name: str, ndcg: float, ms: float) -> StageResult:
        metrics = {"ndcg@10": ndcg, "recall@10": 0.8, "recall@100": 0.9, "mrr@10": 0.6}
        return StageResult(name, metrics, {"q1": ndcg}, {"retrieve": [ms, ms]})

    results = {
        "bm25": stage("bm25", 0.679, 3.9),
        "dense": stage("dense", 0.657, 23.1),
        "hybrid": stage("hybrid", 0.729, 27.9),
        "hybrid+rerank": stage("hybrid+rerank", 0.722, 872.0),
    }
    path = quality_latency_chart(results, tmp_path, "tiny")
    assert path == tmp_path / "quality_latency.png"
    assert matplotlib.image.imread(path).shape[0] > 300
    report = write_report(results, tmp_path / "rep", "tiny")
    assert "quality_latency.png" in report.read_text()
    assert not (tmp_path / "rep" / "ablation.png").exists()


def test_gold_removed_index_is_corrected_not_reused(tmp_path: Path) -> None:
    """The 'answer absent' index must lack exactly the excluded paragraphs, even when an index
    built for another question sample (same size) is already there."""
    from types import SimpleNamespace

    import numpy as np

    from ragserve.evaluation.answers import _copy_without
    from ragserve.stores.base import IndexWrite
    from ragserve.stores.local import LocalIndex
    from ragserve.types import Chunk, DocumentRecord, content_hash

    def index(name: str) -> LocalIndex:
        idx = LocalIndex.from_settings(Settings(data_dir=tmp_path, collection=name))
        idx.open("test-model", 4)
        return idx

    def write(idx: LocalIndex, doc_ids: list[str]) -> None:
        writes = []
        for i, d in enumerate(doc_ids):
            text = f"paragraph {d} about topic {i}"
            chunk = Chunk(d + "-0", d, d, text, 0, 0, len(text), content_hash(text))
            rec = DocumentRecord(d, d, content_hash(text), 1)
            writes.append(IndexWrite(rec, [chunk], np.eye(4, dtype=np.float32)[[i % 4]]))
        idx.write(writes)

    src, dst = index("full"), index("absent")
    write(src, ["p1", "p2", "p3", "p4"])
    write(dst, ["p1", "p2", "p4"])  # an earlier sample excluded p3, this one excludes p2
    _copy_without(SimpleNamespace(index=src), SimpleNamespace(index=dst), {"p2"})
    assert sorted(r.doc_id for r in dst.documents()) == ["p1", "p3", "p4"]
    assert dst.dense_search(np.eye(4, dtype=np.float32)[2], 1)[0][0] == "p3-0"
    src.close()
    dst.close()


@pytest.mark.fast
def test_a_limited_answer_eval_spreads_over_the_sample_not_its_first_articles() -> None:
    # The sample is sorted by id and SQuAD ids group by article.
    questions = [{"id": f"{a:02d}-{i:02d}", "article": a} for a in range(10) for i in range(30)]
    picked = subsample(questions, 30, seed=7)
    assert len(picked) == 30 and picked == sorted(picked, key=lambda q: q["id"])
    assert len({q["article"] for q in picked}) >= 7
    assert picked == subsample(questions, 30, seed=7), "the same questions every run"
    assert subsample(questions, None, seed=7) == questions
