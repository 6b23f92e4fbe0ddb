"""Calibrate the answerability judge: its best probability over the top-N retrieved passages
when the gold paragraph is in the index vs when it is not, on the held-out *training* articles
(the articles ``training/train_answerability.py`` held out; never the evaluation articles).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/calibrate_answerability.py [--compare] [--samples]

Retrieval is the real pipeline (hybrid, defaults) over all 2,067 SQuAD-dev paragraphs.
"Absent" takes the same ranked list with the gold paragraph's chunks removed, i.e. the next
passages retrieval would have shown: what the reader sees when the gold is missing from the
index (dense feedback would re-run on the reduced list; the difference is ignored here).
"Present" is the list as retrieved: the gold is not always in the top N, and refusing then is
counted as a refusal (the figure conditional on the gold being in the top N is printed too).

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

from ragserve.answerability import ANSWERABLE_THRESHOLD, AnswerabilityJudge
from ragserve.config import Settings
from ragserve.ingest.loaders import iter_beir_corpus
from ragserve.ingest.pipeline import Ingestor
from ragserve.models import BUILTIN_ANSWERABILITY_DIR
from ragserve.pipeline import RagPipeline
from ragserve.types import Hit

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RAGSERVE_DATASETS") or REPO.parent / "shared" / "datasets")
SQUAD = DATASETS / "squad-v1.1-dev"
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
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
            f"top-{n}: ROC AUC present vs absent {_auc(present, absent):.3f}; "
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


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
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


def check_samples(judge: AnswerabilityJudge) -> None:
    """Judge the top-3 chunks the real pipeline retrieves over the bundled sample corpus."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RAGSERVE_DATA_DIR": tmp, "RAGSERVE_NO_PROGRESS": "1"}
        subprocess.run(
            [sys.executable, "-m", "ragserve.cli", "ingest", str(REPO / "samples" / "corpus")],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        pipe = RagPipeline(Settings(data_dir=Path(tmp)))
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
    ap.add_argument("--data-dir", type=Path, default=None, help="reuse an ingested SQuAD index")
    ap.add_argument("--compare", action="store_true", help="also the re-ranker and lexical gate")
    ap.add_argument("--samples", action="store_true", help="also the bundled sample corpus")
    ap.add_argument("--threshold", type=float, default=ANSWERABLE_THRESHOLD, help="for --samples")
    args = ap.parse_args()
    top_ns = [int(x) for x in args.top_n.split(",")]
    model_dir = BUILTIN_ANSWERABILITY_DIR if args.model == "builtin" else Path(args.model)
    articles = set(held_out_articles(model_dir))
    qa = [json.loads(x) for x in (SQUAD / "qa.jsonl").open() if x.strip()]
    qa = [q for q in qa if q["title"] in articles]
    random.Random(11).shuffle(qa)
    qa = qa[: args.n or None]
    print(f"{len(qa)} questions of the held-out training articles {sorted(articles)}")

    judge = AnswerabilityJudge(args.model, threshold=args.threshold)
    judge.warm_up()
    pipe = squad_pipeline(args.data_dir or Path(tempfile.mkdtemp()))
    ranked = retrieve(pipe, qa, depth=max(top_ns) + 5)

    def judge_scores(question: str, hits: list[Hit]) -> list[float]:
        return judge.score(question, [h.chunk.searchable_text for h in hits])

    report("answerability judge", best_scores(qa, ranked, judge_scores, top_ns), THRESHOLDS)
    print(f"\np50 latency, scoring 3 passages: {latency_p50(judge, qa, ranked):.0f} ms")
    if args.compare:
        compare(pipe, qa, ranked, top_ns)
    pipe.close()
    if args.samples:
        check_samples(judge)


def compare(pipe: RagPipeline, qa: list[dict], ranked: list[list[Hit]], top_ns: list[int]) -> None:
    """The signals the pipeline has today, on the same passages."""
    from ragserve.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker()
    reranker.warm_up()

    def rerank_scores(question: str, hits: list[Hit]) -> list[float]:
        return [float(x) for x in reranker.score(question, [h.chunk.searchable_text for h in hits])]

    report(
        "shipped re-ranker probability", best_scores(qa, ranked, rerank_scores, top_ns), THRESHOLDS
    )
    # The lexical gate scores a set of passages, not each alone: its "best over the top N" is
    # the best sentence among them, so it is computed per N here.
    support = pipe.support
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
    report("lexical support (min_support)", figures, (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6))


if __name__ == "__main__":
    main()
