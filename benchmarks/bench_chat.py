"""Foundation figures over the bundled sample corpus: ingestion rate, and /chat latency split
by stage (through the real HTTP app, sequential requests, warm models).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_chat.py [--rounds 3] [--generator extractive]

``--ttft``: the six demo questions instead, each through ``POST /chat/stream`` on a real uvicorn
server, timing the first ``token`` event as a client receives it (verified streaming releases
a sentence only once it passes the checks, so this is what a person waits for):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_chat.py --ttft --generator llama --rounds 1
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
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

# The README's demo: five answered from the sample corpus, one refused (smtplib is not in it).
DEMO_QUESTIONS = [
    "How do I set a timeout on an httpx client?",
    "How do I enable HTTP/2?",
    "What does zlib's deflate do?",
    "How do I iterate over a directory with Boost.Filesystem?",
    "How do I set retries on the async client's transport?",
    "How do I send an email with smtplib?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stream_once(url: str, question: str) -> tuple[float, float, dict]:
    """(client TTFT ms, total ms, the done event's body) for one streamed question."""
    t0 = time.perf_counter()
    first = None
    done: dict = {}
    event = ""
    with httpx.stream("POST", f"{url}/chat/stream", json={"query": question}, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "token" and first is None:
                first = (time.perf_counter() - t0) * 1000
            elif line.startswith("data:") and event in ("done", "error"):
                # An error event (the reader's timeout on a busy CPU) is reported as its kind.
                body = json.loads(line[5:])
                done = body if event == "done" else {"kind": body.get("error", "error")}
    total = (time.perf_counter() - t0) * 1000
    return first if first is not None else total, total, done


def ttft(settings: Settings, rounds: int) -> None:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stream_once(url, "warm up the reader")
    firsts, totals = [], []
    for r in range(rounds):
        for q in DEMO_QUESTIONS:
            q = q.rstrip("?") + "?" * (r + 1)  # a different spelling each round: no cache
            first, total, done = _stream_once(url, q)
            firsts.append(first)
            totals.append(total)
            server_ttft = done.get("timings", {}).get("ttft", float("nan"))
            print(
                f"  {first / 1000:5.1f} s first token (server {server_ttft / 1000:5.1f} s), "
                f"{total / 1000:5.1f} s total, {done.get('kind', '?'):8} {q}"
            )
    server.should_exit = True
    thread.join(timeout=30)
    print(
        f"/chat/stream, {len(firsts)} questions, generator {settings.generation.generator}: "
        f"TTFT p50 {statistics.median(firsts) / 1000:.1f} s (min {min(firsts) / 1000:.1f}, "
        f"max {max(firsts) / 1000:.1f}), total p50 {statistics.median(totals) / 1000:.1f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--generator", default="extractive")
    ap.add_argument("--ttft", action="store_true", help="time the first token of /chat/stream")
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
        if args.ttft:
            ttft(settings, args.rounds)
            return
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
