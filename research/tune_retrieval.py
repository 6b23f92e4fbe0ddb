"""Retrieval tuning on the tuning splits only: SciFact train and NFCorpus dev.

Each knob the retrieval issue names is moved one at a time away from the defaults, through the
same `evaluate_retrieval` the eval CLI runs, and nDCG@10 is printed per dataset with the mean of
both (the selection criterion: a default must hold up on both corpora, not win one). The test
splits are never touched here; `bench_retrieval.py` reports them once with the chosen defaults.

    HF_HUB_OFFLINE=1 .venv/bin/python research/tune_retrieval.py \
        [--data-dir DIR] [--knobs bm25,fusion,feedback,chunk,rerank] [--rerank-queries 100]

Knobs: BM25 tokenisation (stemming, stop words); fusion (convex alpha, RRF k, over-fetch
depth); dense feedback (chunks, weight); chunk size (a separate collection per size, so it
re-ingests); re-ranking (candidates, max length; on the first --rerank-queries queries, since
the cross-encoder costs ~40 ms per pair here).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TUNING_SPLITS = {"scifact": "train", "nfcorpus": "dev"}

# knob -> (stage that measures it, [(label, settings overrides)]); the first entry is the default.
GRIDS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "bm25": (
        "bm25",
        [
            ("stem + stop words", {}),
            ("stem only", {"bm25_stopwords": False}),
            ("stop words only", {"bm25_stemming": False}),
            ("neither", {"bm25_stemming": False, "bm25_stopwords": False}),
        ],
    ),
    "fusion": (
        "hybrid",
        [("alpha 0.55", {})]
        + [(f"alpha {a}", {"fusion_alpha": a}) for a in (0.35, 0.45, 0.65, 0.75)]
        # Below 100 is not measurable here: the eval fetches 100 per side for Recall@100.
        + [(f"depth {d}", {"fusion_depth": d}) for d in (200, 400)],
    ),
    "rrf": (
        "hybrid-rrf",
        [("rrf k 60", {})] + [(f"rrf k {k}", {"rrf_k": k}) for k in (10, 30, 100)],
    ),
    "feedback": (
        "hybrid",
        [("2 chunks, weight 1.0", {})]
        + [("off", {"dense_feedback_docs": 0})]
        + [(f"{n} chunks, weight 1.0", {"dense_feedback_docs": n}) for n in (1, 3, 5)]
        + [(f"2 chunks, weight {w}", {"dense_feedback_weight": w}) for w in (0.5, 2.0)],
    ),
    "chunk": (
        "hybrid",
        [("512 (clamped to 254)", {}), ("128", {"chunk_size": 128, "chunk_overlap": 13})],
    ),
    "rerank": (
        "hybrid+rerank",
        [("20 candidates, 256 tokens", {})]
        + [(f"{n} candidates", {"rerank_candidates": n}) for n in (10, 40)]
        + [(f"max length {m}", {"rerank_max_length": m}) for m in (128, 512)],
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(".ragserve"))
    ap.add_argument("--knobs", default="bm25,fusion,rrf,feedback,chunk,rerank")
    ap.add_argument("--rerank-queries", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("RAGSERVE_NO_PROGRESS", "1")

    from ragserve.config import Settings
    from ragserve.evaluation.beir import load_beir
    from ragserve.evaluation.retrieval import evaluate_retrieval

    data = {name: load_beir(DATASETS / name, split) for name, split in TUNING_SPLITS.items()}
    for knob in args.knobs.split(","):
        stage, grid = GRIDS[knob]
        print(f"\n{knob} (stage {stage}; first row = default)")
        print(f"{'setting':26} {'SciFact train':>14} {'NFCorpus dev':>13} {'mean':>7}")
        for label, overrides in grid:
            scores = []
            for name, dataset in data.items():
                # The eval CLI's own collection, so an index built by `ragserve eval` is reused.
                collection = f"eval-{name}" + (
                    f"-chunk{overrides['chunk_size']}" if "chunk_size" in overrides else ""
                )
                settings = Settings(data_dir=args.data_dir, collection=collection, **overrides)
                result = evaluate_retrieval(
                    settings,
                    dataset,
                    stages=(stage,),
                    limit=args.rerank_queries if knob == "rerank" else None,
                    progress=False,
                )
                scores.append(result[stage].metrics["ndcg@10"])
            mean = sum(scores) / len(scores)
            print(f"{label:26} {scores[0]:14.4f} {scores[1]:13.4f} {mean:7.4f}", flush=True)


if __name__ == "__main__":
    main()
