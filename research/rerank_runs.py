"""Issue 24: the best-run reading (MaxP over runs of 2 sentences) and its fusion, offline.

Reads the hybrid candidates that ``tune_rerank_default.py`` cached per set (``{set}-cands.json``,
top 10 texts; the test sets' caches come from its ``--test`` runs or from the same
``retrieve`` on the test splits) and the 160-token-window probabilities beside them
(``{set}-w160.json``). Scores every run of 2 consecutive sentences of each candidate once with
the configured re-ranker (``RAGSERVE_RERANKER_MODEL`` / ``RAGSERVE_RERANK_RUNTIME``), cached as
``{set}-maxp2.json``, then prints the grid: runs every sentence (stride 1) or every second
sentence (stride 2, what ``rerank_sentences=2`` reads), N candidates, alpha, and how the CE
side enters the fusion (min-max logits as ``interpolate``, logits with a floored range, or the
probability as ``probability``). Dev sets choose; test sets are printed to report.

    HF_HUB_OFFLINE=1 .venv/bin/python research/rerank_runs.py --cache CACHE [--stride 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rerank_signals import print_table, unit_scale, windows
from tune_rerank_default import doc_run, load_set

SETS = {  # cache prefix -> (load_set name, test split)
    "squad-dev": ("squad", False),
    "scifact-dev": ("scifact", False),
    "nfcorpus-dev": ("nfcorpus", False),
    "squad-test": ("squad", True),
    "scifact-test": ("scifact", True),
    "nfcorpus-test": ("nfcorpus", True),
}


def score_runs(cache: Path, tag: str) -> dict[str, Any]:
    """Per query, per candidate (top 10): the CE probability of each run of 2 sentences."""
    path = cache / f"{tag}-maxp2.json"
    if path.is_file():
        return json.loads(path.read_text())
    from ragserve.config import Settings
    from ragserve.rerank.cross_encoder import CrossEncoderReranker

    reranker = CrossEncoderReranker.from_settings(Settings().replace(rerank_sentences=0))
    cands = json.loads((cache / f"{tag}-cands.json").read_text())
    out: dict[str, Any] = {}
    for qid in json.loads((cache / f"{tag}-w160.json").read_text()):
        texts = cands[qid]["texts"][:10]
        pairs = [(i, run) for i, text in enumerate(texts) for run in windows(text, 2)]
        t0 = time.perf_counter()
        probs = reranker.score(cands[qid]["query"], [w for _, w in pairs])
        runs: list[list[float]] = [[] for _ in texts]
        for (i, _), p in zip(pairs, probs, strict=True):
            runs[i].append(float(p))
        out[qid] = {"win": runs, "ms": (time.perf_counter() - t0) * 1000, "pairs": len(pairs)}
    path.write_text(json.dumps(out))
    return out


def every_other(runs: list[float]) -> list[float]:
    """Stride-1 runs -> the runs ``sentence_windows(text, 2)`` reads (every second start, and
    one ending at the last sentence)."""
    picked = runs[::2]
    if len(runs) > 1 and (len(runs) - 1) % 2:
        picked.append(runs[-1])
    return picked


def ce_term(probs: list[float], side: str) -> np.ndarray:
    from ragserve.rerank.cross_encoder import probability_logits

    if side == "probability":
        return np.asarray(probs, dtype=float)
    logits = probability_logits(probs)
    if side == "logit" or not len(logits):
        return unit_scale(logits)
    span = max(float(np.ptp(logits)), float(side.removeprefix("logit-floor")))
    return (logits - logits.min()) / span


def order(c: dict[str, Any], best: list[float], n: int, alpha: float, side: str) -> list[int]:
    k = min(n, len(best), len(c["docs"]))
    total = alpha * ce_term(best[:k], side) + (1 - alpha) * unit_scale(np.asarray(c["scores"][:k]))
    head = sorted(range(k), key=lambda i: -total[i])
    return head + list(range(k, len(c["docs"])))


def main() -> None:
    from ragserve.evaluation.retrieval import ranx_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--stride", type=int, choices=(1, 2), default=2)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--sides", default="logit,logit-floor1,logit-floor2,logit-floor4,probability")
    args = ap.parse_args()
    grid = [
        (n, a, side)
        for side in args.sides.split(",")
        for n in (5, 10)
        for a in (0.3, 0.4, 0.5, 0.6, 0.7)
    ]
    table: dict[str, dict[str, str]] = {}
    names = [s for s in args.sets.split(",") if (args.cache / f"{s}-w160.json").is_file()]
    for tag in names:
        dataset, test = SETS[tag]
        spec = load_set(dataset, test, 300)
        runs = score_runs(args.cache, tag)
        cands = json.loads((args.cache / f"{tag}-cands.json").read_text())
        qids = [q for q in (spec.get("heldout") or spec["qrels"]) if q in runs]
        qrels = {q: spec["qrels"][q] for q in qids}
        best = {
            q: [max(every_other(r) if args.stride == 2 else r, default=0.0) for r in runs[q]["win"]]
            for q in qids
        }
        rows = [("hybrid alone", None)] + [
            (f"{side} a{a} N{n}", (n, a, side)) for n, a, side in grid
        ]
        for label, cfg in rows:
            run, first = {}, []
            for q in qids:
                c = cands[q]
                o = list(range(len(c["docs"]))) if cfg is None else order(c, best[q], *cfg)
                run[q] = doc_run(c, o)
                first.append(c["docs"][o[0]] in qrels[q])
            means, _ = ranx_metrics(qrels, run)
            cell = f"{np.mean(first):.3f}" if dataset == "squad" else f"{means['ndcg@10']:.4f}"
            table.setdefault(label, {})[tag] = cell
    print(f"stride {args.stride}; SQuAD: gold-first; BEIR: nDCG@10 (SciFact dev: held-out 80)")
    print_table("config", table, names)


if __name__ == "__main__":
    main()
