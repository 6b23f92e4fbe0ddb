"""Hold N concurrent clients on /chat for T seconds against a local server; print latency.

    .venv/bin/python benchmarks/load_chat.py --clients 50 --seconds 60
        # starts `ragserve serve` on a free loopback port over the sample corpus (extractive
        # generator), or pass --url http://127.0.0.1:8000 to load an already running server.

Bounded by design: only loopback URLs are accepted, and the run stops after --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx

QUESTIONS = [
    "How do I set a timeout on an httpx client?",
    "What exceptions can httpx raise?",
    "How do I enable HTTP/2?",
    "How do I use a proxy?",
    "How does authentication work in httpx?",
    "How do I verify SSL certificates?",
    "What does the zlib deflate function do?",
    "How do I iterate over a directory with Boost.Filesystem?",
    "What environment variables does httpx read?",
    "How do I make async requests?",
    "hello!",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    repo: Path,
) -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory()
    port = _free_port()
    env = {
        **os.environ,
        "RAGSERVE_DATA_DIR": tmp.name,
        "RAGSERVE_RATE_LIMIT_PER_MINUTE": "100000",
        "HF_HUB_OFFLINE": "1",
        "RAGSERVE_NO_PROGRESS": "1",
    }
    subprocess.run(
        [sys.executable, "-m", "ragserve.cli.main", "ingest", str(repo / "samples/corpus")],
        env=env,
        check=True,
        cwd=repo,
        stdout=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve.cli.main", "serve", "--port", str(port)],
        env=env,
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url, tmp
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become ready")


async def _client(
    url: str, stop_at: float, latencies: list[float], codes: Counter[int], seed: int
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            q = rng.choice(QUESTIONS)
            t0 = time.perf_counter()
            try:
                r = await client.post("/chat", json={"query": q})
                codes[r.status_code] += 1
                if r.status_code == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                elif r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            except httpx.HTTPError:
                codes[-1] += 1


async def _health_probe(url: str, stop_at: float, out: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            await client.get("/health")
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.5)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    proc = tmp = None
    url = args.url
    if url is None:
        proc, url, tmp = _start_server(Path(__file__).resolve().parents[1])
    elif urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("only loopback targets are allowed")
    try:
        latencies: list[float] = []
        health: list[float] = []
        codes: Counter[int] = Counter()
        stop_at = time.monotonic() + args.seconds
        await asyncio.gather(
            _health_probe(url, stop_at, health),
            *(_client(url, stop_at, latencies, codes, i) for i in range(args.clients)),
        )
        total = sum(codes.values())
        errors = sum(n for c, n in codes.items() if c not in (200, 429))
        print(
            f"clients {args.clients}, {args.seconds:.0f} s: {total} requests "
            f"({total / args.seconds:.1f}/s), status counts {dict(codes)}"
        )
        print(f"errors (other than 429): {errors}")
        print(
            f"/chat latency ms: p50 {_pct(latencies, 50):.0f}  p95 {_pct(latencies, 95):.0f}  "
            f"p99 {_pct(latencies, 99):.0f}"
        )
        print(f"/health latency under load ms: p50 {_pct(health, 50):.1f}  max {max(health):.1f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
