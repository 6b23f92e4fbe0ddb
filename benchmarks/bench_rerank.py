"""Re-ranker figures: nDCG@10 of BM25 top-100 alone vs re-ranked by the shipped model (alone,
RRF-fused with the BM25 order, and interpolated with the BM25 scores), on SciFact test and
NFCorpus test; throughput in pairs/s at max length 256 and 512; latency of
re-ranking 20 candidates.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_rerank.py [--datasets scifact,nfcorpus]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from ranx import Qrels, Run, evaluate
from tqdm import tqdm

from ragserve.config import Settings
from ragserve.rerank import CrossEncoderReranker, rerank_order

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def load(
    name: str, split: str = "test"
) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    folder = DATASETS / name
    corpus = [json.loads(x) for x in (folder / "corpus.jsonl").open()]
    queries = {
        json.loads(x)["_id"]: json.loads(x)["text"] for x in (folder / "queries.jsonl").open()
    }
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / f"{split}.tsv").open():
        q, d, s = line.rstrip("\r\n").split("\t")
        if q != "query-id" and int(s) > 0:
            qrels.setdefault(q, {})[d] = int(s)
    return corpus, queries, qrels


def passage(d: dict) -> str:
    return f"{d['title']}\n{d['text']}" if d.get("title") else d["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--datasets", default="scifact,nfcorpus")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--model", default="builtin", help="'builtin' or a CrossEncoder path")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--split", default="test", help="qrels split (dev/train to check a model)")
    ap.add_argument("--depth", type=int, default=100, help="BM25 candidates re-ranked")
    ap.add_argument("--max-queries", type=int, default=0, help="first N queries only (0 = all)")
    ap.add_argument(
        "--alpha",
        type=float,
        default=Settings().rerank_alpha,
        help="cross-encoder weight of the interpolation (default: the pipeline's)",
    )
    ap.add_argument("--save-scores", type=Path, default=None, help="write per-query scores (JSON)")
    args = ap.parse_args()
    reranker = CrossEncoderReranker(args.model, max_length=args.max_length, batch_size=32)
    reranker.warm_up()
    stemmer = Stemmer.Stemmer("english")
    print(
        f"{'dataset':10} {'BM25 nDCG@10':>13} {'BM25+CE nDCG@10':>16} {'RRF(BM25,CE)':>13} "
        f"{f'interp a={args.alpha:g}':>14} {'queries':>8} {'time s':>7}"
    )
    saved: dict[str, dict] = {}
    for name in filter(None, args.datasets.split(",")):  # --datasets "" = throughput only
        corpus, queries, qrels = load(name, args.split)
        texts = [passage(d) for d in corpus]
        ids = [d["_id"] for d in corpus]
        bm25 = bm25s.BM25()
        bm25.index(
            bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
            show_progress=False,
        )
        qids = sorted(qrels)[: args.max_queries or None]
        qrels = {q: qrels[q] for q in qids}
        tokens = bm25s.tokenize(
            [queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False
        )
        docs, scores = bm25.retrieve(tokens, k=args.depth, show_progress=False, n_threads=2)
        run_bm25, run_ce, run_fused, run_interp = {}, {}, {}, {}
        per_query: dict[str, dict] = {}
        t0 = time.time()
        for i, q in enumerate(tqdm(qids, desc=f"re-ranking {name}", unit="query")):
            cand = [int(x) for x in docs[i]]
            run_bm25[q] = {ids[c]: float(s) for c, s in zip(cand, scores[i], strict=True)}
            ce = reranker.score(queries[q], [texts[c] for c in cand])
            run_ce[q] = {ids[c]: float(s) for c, s in zip(cand, ce, strict=True)}
            # the fusion `RAGSERVE_RERANK_FUSION=rrf` applies in the pipeline
            fused = rerank_order(ce, len(cand), fusion="rrf")
            run_fused[q] = {ids[cand[j]]: s for j, s in fused}
            interp = rerank_order(
                ce, len(cand), fusion="interpolate", retrieval_scores=scores[i], alpha=args.alpha
            )
            run_interp[q] = {ids[cand[j]]: s for j, s in interp}
            per_query[q] = {
                "docs": [ids[c] for c in cand],
                "bm25": [float(x) for x in scores[i]],
                "ce": [float(x) for x in ce],
            }
        elapsed = time.time() - t0
        a = evaluate(Qrels(qrels), Run(run_bm25), "ndcg@10")
        b = evaluate(Qrels(qrels), Run(run_ce), "ndcg@10")
        c = evaluate(Qrels(qrels), Run(run_fused), "ndcg@10")
        d = evaluate(Qrels(qrels), Run(run_interp), "ndcg@10")
        print(f"{name:10} {a:13.4f} {b:16.4f} {c:13.4f} {d:14.4f} {len(qids):8d} {elapsed:7.0f}")
        saved[name] = {"split": args.split, "model": args.model, "queries": per_query}
    if args.save_scores:
        args.save_scores.write_text(json.dumps(saved))
    if args.skip_throughput:
        return

    corpus, queries, _ = load("scifact")
    texts = [passage(d) for d in corpus[:256]]
    for max_length in (256, 512):
        r = CrossEncoderReranker(args.model, max_length=max_length, batch_size=32)
        r.warm_up()
        r.score("warm up", texts[:8])
        t0 = time.perf_counter()
        r.score("What causes antibiotic resistance in bacteria?", texts)
        rate = len(texts) / (time.perf_counter() - t0)
        print(f"throughput at max length {max_length}: {rate:.1f} pairs/s")
    lat = []
    for i in range(15):
        t0 = time.perf_counter()
        reranker.score(f"query {i} about cancer treatment outcomes", texts[i * 10 : i * 10 + 20])
        lat.append((time.perf_counter() - t0) * 1000)
    print(
        f"re-rank 20 candidates (max length {args.max_length}): p50 {statistics.median(lat):.0f} ms, "
        f"p95 {float(np.percentile(lat, 95)):.0f} ms"
    )


if __name__ == "__main__":
    main()
