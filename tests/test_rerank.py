"""The shipped cross-encoder, loaded offline, on real pairs from the datasets (test splits are
used here only as a check, never for training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragserve.errors import EmptyQueryError, ModelNotFoundError
from ragserve.rerank import CrossEncoderReranker, fuse_rerank
from ragserve.types import Chunk, Hit


def _hit(i: str, text: str, title: str | None = None) -> Hit:
    return Hit(
        Chunk(
            id=i,
            doc_id=i,
            source=i,
            text=text,
            chunk_index=0,
            char_start=0,
            char_end=len(text),
            content_hash="h",
            title=title,
        ),
        0.0,
    )


@pytest.fixture(scope="module")
def reranker() -> CrossEncoderReranker:
    r = CrossEncoderReranker()
    r.warm_up()
    return r


def _scifact_cases(shared: Path, n: int) -> list[tuple[str, dict, list[dict]]]:
    corpus = {}
    with (shared / "scifact" / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            corpus[d["_id"]] = d
    queries = {
        json.loads(x)["_id"]: json.loads(x)["text"]
        for x in (shared / "scifact" / "queries.jsonl").open()
    }
    ids = list(corpus)
    cases = []
    for line in (shared / "scifact" / "qrels" / "test.tsv").open():
        q, d, _score = line.rstrip("\r\n").split("\t")
        if q == "query-id":
            continue
        unrelated = [corpus[ids[(int(d) * 7 + k * 131) % len(ids)]] for k in range(4)]
        cases.append((queries[q], corpus[d], [u for u in unrelated if u["_id"] != d]))
        if len(cases) >= n:
            break
    return cases


def test_relevant_passage_outranks_unrelated_ones(
    reranker: CrossEncoderReranker, shared_datasets: Path
) -> None:
    wins = 0
    cases = _scifact_cases(shared_datasets, 20)
    for query, pos, negs in cases:
        hits = [_hit(n["_id"], n["text"], n["title"]) for n in negs] + [
            _hit(pos["_id"], pos["text"], pos["title"])
        ]
        ranked = reranker.rerank(query, hits, len(hits))
        wins += ranked[0].chunk.id == pos["_id"]
        assert all(0.0 <= h.score <= 1.0 for h in ranked)
    # Chance is 1 in 5. The shipped model is an early, undertrained one (see its model card):
    # this guards against a broken or random model, not the quality target of issue 2.
    assert wins >= 10, f"relevant passage first in only {wins}/{len(cases)} cases"


def test_scores_are_probabilities_and_batched_consistently(reranker: CrossEncoderReranker) -> None:
    texts = [f"passage {i} about the capital of France, Paris" for i in range(40)]
    together = reranker.score("What is the capital of France?", texts)
    alone = np.array([reranker.score("What is the capital of France?", [t])[0] for t in texts[:3]])
    assert together.shape == (40,) and np.all((together >= 0) & (together <= 1))
    assert np.allclose(together[:3], alone, atol=1e-3)


def test_rerank_keeps_k_and_records_the_stage_score(reranker: CrossEncoderReranker) -> None:
    hits = [_hit(str(i), f"passage number {i} about cats") for i in range(6)]
    out = reranker.rerank("cats", hits, 3)
    assert len(out) == 3 and all("rerank" in h.scores for h in out)


def test_bad_input(reranker: CrossEncoderReranker) -> None:
    assert reranker.rerank("anything", [], 5) == []
    with pytest.raises(EmptyQueryError):
        reranker.rerank("  ", [_hit("a", "text")], 1)
    long = _hit("long", "word " * 20000)
    assert len(reranker.rerank("word", [long, _hit("b", "other")], 2)) == 2


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        CrossEncoderReranker(str(tmp_path / "nothing")).warm_up()


def test_fusion_orders_by_both_rankings_and_keeps_the_ce_probability() -> None:
    hits = [_hit(str(i), f"passage {i}") for i in range(4)]  # retrieval order 0, 1, 2, 3
    ce = np.array([0.1, 0.2, 0.9, 0.3], dtype=np.float32)  # CE order 2, 3, 1, 0
    alone = fuse_rerank(hits, ce, 4, fusion="none")
    assert [h.chunk.id for h in alone] == ["2", "3", "1", "0"]
    fused = fuse_rerank(hits, ce, 3, fusion="rrf", rrf_k=60)
    # 2: 1/63 + 1/61, then 0: 1/61 + 1/64 edges out 1: 1/62 + 1/63; 3 (1/64 + 1/62) is cut.
    assert [h.chunk.id for h in fused] == ["2", "0", "1"]
    assert [h.scores["rerank"] for h in fused] == pytest.approx([0.9, 0.1, 0.2])
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert fuse_rerank(hits, ce, 0, fusion="rrf") == []
