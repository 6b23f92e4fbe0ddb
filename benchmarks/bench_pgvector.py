"""PostgreSQL + pgvector backend: how insert and query cost grow with the collection.

For each size (default 5k, 50k, 200k chunks) it prints insert throughput through
``PostgresIndex.write`` (one transaction per 10-chunk document, HNSW maintained on the fly),
dense and sparse query latency (p50/p95) and HNSW recall@10 against exact search (a sequential
scan, index scans disabled). Then, on one size, a table of recall / latency / build time for a
few (m, ef_construction, ef_search) so defaults can be chosen.

Vectors are synthetic but clustered like real embeddings (random Gaussian vectors are the
HNSW worst case and say little about text); queries are perturbed corpus points. Dimension
384 (all-MiniLM-L6-v2). Chunk texts are Zipf-distributed words, so the sparse side does work.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_pgvector.py --sizes 5000,50000
    ... --dsn postgresql://user:pw@host/db   # an existing server instead of a throwaway one
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Iterator

import numpy as np
from pg_harness import LocalPostgres

from ragserve.stores.base import IndexWrite
from ragserve.stores.postgres import PostgresIndex
from ragserve.types import Chunk, DocumentRecord, content_hash

__all__ = ["hnsw_tradeoff", "main"]

DIM = 384
CHUNKS_PER_DOC = 10
SPREAD = 1.5
_VOCAB = [f"w{i}" for i in range(20_000)]


def _clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    which = rng.integers(0, len(centers), size=n)
    # Noise of norm SPREAD around unit centres. 1.5: chunks of one topic have cosine ~0.3 and
    # neighbourhoods overlap, a hard but text-like case; 0.8 makes tight clusters (recall ~1
    # everywhere); 7 is plain random vectors, the HNSW worst case (recall 0.45 at 50k).
    v = centers[which] + rng.normal(scale=SPREAD / np.sqrt(DIM), size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _texts(n: int, rng: np.random.Generator) -> list[str]:
    ranks = np.minimum(rng.zipf(1.3, size=(n, 40)), len(_VOCAB)) - 1
    return [" ".join(_VOCAB[r] for r in row) for row in ranks]


def _writes(
    n: int, rng: np.random.Generator, centers: np.ndarray, start: int
) -> Iterator[tuple[IndexWrite, np.ndarray]]:
    for d in range(start // CHUNKS_PER_DOC, (start + n) // CHUNKS_PER_DOC):
        doc_id = f"doc{d:07d}"
        texts = _texts(CHUNKS_PER_DOC, rng)
        vecs = _clustered(CHUNKS_PER_DOC, rng, centers)
        chunks = [
            Chunk(
                id=f"{doc_id}-{i}",
                doc_id=doc_id,
                source=f"{doc_id}.txt",
                text=t,
                chunk_index=i,
                char_start=0,
                char_end=len(t),
                content_hash=content_hash(t),
            )
            for i, t in enumerate(texts)
        ]
        rec = DocumentRecord(doc_id, f"{doc_id}.txt", content_hash(doc_id), len(chunks))
        yield IndexWrite(rec, chunks, vecs), vecs


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, p))


def _recall_and_latency(
    idx: PostgresIndex, queries: np.ndarray, truth: list[set[str]], ef_search: int
) -> tuple[float, float, float]:
    idx.ef_search = ef_search
    hits, lat = 0, []
    for q, exact in zip(queries, truth, strict=True):
        t = time.perf_counter()
        got = idx.dense_search(q, 10)
        lat.append(time.perf_counter() - t)
        hits += len({cid for cid, _ in got} & exact)
    return hits / (10 * len(queries)), _pct(lat, 50), _pct(lat, 95)


GRID = ((8, 64), (16, 64), (16, 128), (32, 200))
EF_SEARCH = (20, 40, 100, 200, 400)


def hnsw_tradeoff(
    idx: PostgresIndex,
    queries: np.ndarray,
    truth: list[set[str]],
    grid: tuple[tuple[int, int], ...] = GRID,
    ef_search: tuple[int, ...] = EF_SEARCH,
) -> None:
    """Print recall@10 (against ``truth``) and latency per (m, ef_construction, ef_search)."""
    print("   m | ef_constr | build s | ef_search | recall@10 | p50 ms | p95 ms")
    for m, efc in grid:
        build = idx.rebuild_hnsw(m, efc)
        for ef in ef_search:
            recall, p50, p95 = _recall_and_latency(idx, queries, truth, ef)
            print(
                f"{m:>4} | {efc:>9} | {build:>7.1f} | {ef:>9} | {recall:>9.3f} | "
                f"{p50:>6.2f} | {p95:>6.2f}",
                flush=True,
            )


def _bench_size(
    dsn: str, size: int, queries_n: int, rng: np.random.Generator, centers: np.ndarray
) -> tuple[PostgresIndex, np.ndarray, list[set[str]]]:
    idx = PostgresIndex(dsn, f"bench_{size}_{uuid.uuid4().hex[:6]}")
    idx.open("synthetic-384", DIM)
    sample: list[np.ndarray] = []
    started = time.perf_counter()
    batch: list[IndexWrite] = []
    for w, vecs in _writes(size, rng, centers, 0):
        batch.append(w)
        if len(sample) < queries_n:
            sample.append(vecs[0])
        if len(batch) == 100:
            idx.write(batch)
            batch = []
    idx.write(batch)
    insert_s = time.perf_counter() - started
    noise = rng.normal(scale=0.5 / np.sqrt(DIM), size=(len(sample), DIM)).astype(np.float32)
    queries = np.stack(sample) + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = [{cid for cid, _ in idx.exact_search(q, 10)} for q in queries]
    exact_lat = []
    for q in queries[:20]:
        t = time.perf_counter()
        idx.exact_search(q, 10)
        exact_lat.append(time.perf_counter() - t)
    recall, p50, p95 = _recall_and_latency(idx, queries, truth, idx.ef_search)
    sparse_lat = []
    for text in _texts(queries_n, rng):
        q = " ".join(text.split()[:8])
        t = time.perf_counter()
        idx.sparse_search(q, 10)
        sparse_lat.append(time.perf_counter() - t)
    print(
        f"{size:>8,} | {size / insert_s:>8,.0f} | {insert_s:>7.1f} | {p50:>6.2f} {p95:>6.2f} | "
        f"{recall:>6.3f} | {_pct(exact_lat, 50):>7.1f} | "
        f"{_pct(sparse_lat, 50):>6.2f} {_pct(sparse_lat, 95):>6.2f}",
        flush=True,
    )
    return idx, queries, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="5000,50000,200000", help="comma-separated chunk counts")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sweep-size", type=int, default=None, help="default: the smallest size")
    ap.add_argument("--dsn", default=None, help="existing server (default: start a throwaway one)")
    ap.add_argument("--durable", action="store_true", help="fsync on for the throwaway server")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=SPREAD, help="cluster noise norm (see code)")
    args = ap.parse_args()
    globals()["SPREAD"] = args.spread
    sizes = [int(s) for s in args.sizes.split(",") if s]
    sweep_size = args.sweep_size or min(sizes)
    rng = np.random.default_rng(args.seed)
    centers = rng.normal(size=(max(max(sizes) // 50, 10), DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    with contextlib.ExitStack() as stack:
        if args.dsn:
            dsn = args.dsn
        else:
            server = stack.enter_context(LocalPostgres(durable=args.durable))
            dsn = server.dsn
            print(
                f"throwaway PostgreSQL 18 + pgvector on port {server.port} (fsync={'on' if args.durable else 'off'})"
            )
        defaults = PostgresIndex(dsn, "x")
        print(
            f"dimension {DIM}, spread {SPREAD}, {CHUNKS_PER_DOC} chunks/doc, one transaction per document; "
            f"HNSW m={defaults.m} ef_construction={defaults.ef_construction} "
            f"ef_search={defaults.ef_search}; {args.queries} queries, k=10"
        )
        print(
            "  chunks | chunks/s | insert s | dense ms p50  p95 | rec@10 | exact ms | sparse ms p50 p95"
        )
        kept: tuple[PostgresIndex, np.ndarray, list[set[str]]] | None = None
        for size in sizes:
            idx, queries, truth = _bench_size(dsn, size, args.queries, rng, centers)
            if size == sweep_size:
                kept = (idx, queries, truth)
            else:
                idx.drop_collection()
                idx.close()
        if kept is None:
            return
        idx, queries, truth = kept
        print(f"\nHNSW trade-off on {sweep_size:,} chunks (index rebuilt per (m, ef_construction))")
        hnsw_tradeoff(idx, queries, truth)
        idx.drop_collection()
        idx.close()


if __name__ == "__main__":
    main()
