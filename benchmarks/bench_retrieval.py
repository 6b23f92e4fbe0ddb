"""Retrieval quality and latency with default settings on SciFact and NFCorpus test splits:
the full ablation table and per-stage latency (runs `ragserve eval retrieval` for each).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval.py [--report-dir docs/eval]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
STAGES = (
    "bm25,dense,hybrid-rrf,hybrid-convex,hybrid,hybrid+expansion,hybrid+rerank,"
    "hybrid+expansion+rerank"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--report-dir", type=Path, default=None)
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    args = ap.parse_args()
    for name in args.datasets.split(","):
        cmd = [
            sys.executable,
            "-m",
            "ragserve.cli.main",
            "eval",
            "retrieval",
            "--dataset",
            str(DATASETS / name),
            "--stages",
            STAGES,
            "--json",
        ]
        if args.report_dir:
            cmd += ["--report", str(args.report_dir / name)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(f"\n{name} test ({out['queries']} queries), default pipeline = {out['pipeline']}")
        print(
            f"{'stage':26} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7} {'MRR@10':>7} {'p50 ms':>7} {'p95 ms':>7}"
        )
        for stage, r in out["ablation"].items():
            print(
                f"{stage:26} {r['ndcg@10']:8.4f} {r['recall@10']:7.4f} {r['recall@100']:7.4f} "
                f"{r['mrr@10']:7.4f} {r.get('p50_ms', 0):7.1f} {r.get('p95_ms', 0):7.1f}"
            )
        print(
            "per-stage latency of the default pipeline (ms): "
            + ", ".join(
                f"{k} p50 {v['p50']:.1f} / p95 {v['p95']:.1f}" for k, v in out["stage_ms"].items()
            )
        )


if __name__ == "__main__":
    main()
