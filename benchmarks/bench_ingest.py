"""Ingestion figures on SciFact's corpus: end-to-end docs/s and chunks/s next to the raw
embedding rate for the same chunks, the time to re-run on the unchanged corpus, and peak RSS,
for one embedding runtime (``--runtime torch`` is the PyTorch path ragserve used before
onnxruntime; the default ``auto`` is what ragserve picks on this CPU, printed with its flags).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ingest.py [--limit N] [--runtime R]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import tempfile
import time
from pathlib import Path
from typing import get_args

from ragserve.config import Settings
from ragserve.embedding.embedder import EmbeddingRuntime, SentenceTransformerEmbedder
from ragserve.ingest.loaders import iter_beir_corpus
from ragserve.ingest.pipeline import Ingestor
from ragserve.runtime.cpu import cpu_flags, physical_cores
from ragserve.stores.local import LocalIndex

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact" / "corpus.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="first N documents only")
    ap.add_argument(
        "--runtime",
        default="auto",
        choices=get_args(EmbeddingRuntime),
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=Settings().ingest.embedding_batch_size,
        help="texts per embedding call (RAGSERVE_EMBEDDING_BATCH_SIZE; default: the setting's)",
    )
    args = ap.parse_args()
    docs = list(itertools.islice(iter_beir_corpus(CORPUS), args.limit))
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    print(f"CPU flags: {' '.join(flags)}")
    t0 = time.perf_counter()
    embedder = SentenceTransformerEmbedder(runtime=args.runtime, batch_size=args.batch_size)
    embedder.warm_up()
    print(
        f"embedder: {embedder.fingerprint} ({embedder.runtime}, {physical_cores()} threads, "
        f"batches of {args.batch_size}), "
        f"loaded in {time.perf_counter() - t0:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        index = LocalIndex.from_settings(settings)
        index.open(embedder.fingerprint, embedder.dimension)
        ingestor = Ingestor(settings, index, embedder)
        t0 = time.perf_counter()
        summary = ingestor.ingest_documents(docs, total=len(docs), progress=True)
        first = time.perf_counter() - t0
        chunks = [c for batch in index.iter_chunks(5000) for c in batch]
        t0 = time.perf_counter()
        again = ingestor.ingest_documents(docs, total=len(docs), progress=False)
        rerun = time.perf_counter() - t0
        texts = [c.searchable_text for c in chunks]
        t0 = time.perf_counter()
        embedder.embed(texts)
        raw = time.perf_counter() - t0
        index.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"documents {len(docs)}, chunks {summary.chunks}")
    print(
        f"end-to-end ingest: {first:.1f} s = {len(docs) / first:.1f} docs/s, {summary.chunks / first:.1f} chunks/s"
    )
    print(f"raw embed of the same chunks: {raw:.1f} s = {len(texts) / raw:.1f} chunks/s")
    print(f"end-to-end / raw encode rate: {raw / first:.2f}x")
    print(
        f"re-run on unchanged corpus: {rerun:.2f} s ({100 * rerun / first:.1f}% of the first run), "
        f"{again.count('unchanged')} unchanged"
    )
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
