"""Foundation figures over the bundled sample corpus: ingestion rate, and /chat latency split
by stage (through the real HTTP app, sequential requests, warm models).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_chat.py [--rounds 3] [--generator extractive]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from ragserve.config import Settings
from ragserve.embedding.embedder import SentenceTransformerEmbedder
from ragserve.ingest.pipeline import Ingestor
from ragserve.serving.api.app import create_app
from ragserve.stores.local import LocalIndex

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "corpus"
QUESTIONS = [
    "How do I set a timeout on an httpx client?",
    "What exceptions can httpx raise?",
    "How do I enable HTTP/2?",
    "How do I use a proxy with httpx?",
    "How does basic authentication work?",
    "How do I disable SSL verification?",
    "What does deflate do in zlib?",
    "How do I iterate over a directory with Boost.Filesystem?",
    "Which environment variables does httpx use?",
    "How do I make async requests?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--generator", default="extractive")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), generator=args.generator)
        embedder = SentenceTransformerEmbedder()
        embedder.warm_up()
        index = LocalIndex.from_settings(settings)
        index.open(embedder.fingerprint, embedder.dimension)
        t0 = time.perf_counter()
        summary = Ingestor(settings, index, embedder).ingest_paths([SAMPLES], progress=False)
        elapsed = time.perf_counter() - t0
        index.close()
        files = summary.count("ingested")
        print(
            f"ingest sample corpus: {files} files, {summary.chunks} chunks in {elapsed:.1f} s "
            f"= {files / elapsed:.2f} docs/s, {summary.chunks / elapsed:.1f} chunks/s"
        )
        stages: dict[str, list[float]] = {}
        wall: list[float] = []
        with TestClient(create_app(settings)) as client:
            client.post("/chat", json={"query": "warm up"})
            for r in range(args.rounds):
                for q in QUESTIONS:
                    # A different spelling each round, so the result cache never answers.
                    q = q.rstrip("?") + "?" * (r + 1)
                    t0 = time.perf_counter()
                    body = client.post("/chat", json={"query": q}).json()
                    wall.append((time.perf_counter() - t0) * 1000)
                    for k, v in body["timings"].items():
                        stages.setdefault(k, []).append(v)
        print(
            f"/chat over HTTP, {len(wall)} requests, generator {args.generator}: "
            f"p50 {statistics.median(wall):.1f} ms"
        )
        for k, v in stages.items():
            print(f"  {k:10} p50 {statistics.median(v):8.1f} ms")


if __name__ == "__main__":
    main()
