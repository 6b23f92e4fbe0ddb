"""Hold N concurrent clients on /chat for T seconds against a local server; print latency.

    .venv/bin/python benchmarks/load_chat.py --clients 50 --seconds 60
        # starts `ragserve serve` on a free loopback port over the sample corpus (extractive
        # generator), or pass --url http://127.0.0.1:8000 to load an already running server.
    .venv/bin/python benchmarks/load_chat.py --generator llama --clients 6 --seconds 60
        # the local reader (issue 37): answers a minute, and how fast a request beyond its
        # queue bound is shed (503 + Retry-After, which the clients honour, as 429's).

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
    repo: Path, generator: str
) -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory()
    port = _free_port()
    env = {
        **os.environ,
        "RAGSERVE_GENERATOR": generator,
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
    deadline = time.monotonic() + 300  # the local reader loads in about 80 s
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
    url: str,
    stop_at: float,
    latencies: dict[int, list[float]],
    codes: Counter[int],
    seed: int,
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < stop_at:
            q = rng.choice(QUESTIONS)
            t0 = time.perf_counter()
            try:
                r = await client.post("/chat", json={"query": q})
                codes[r.status_code] += 1
                latencies.setdefault(r.status_code, []).append((time.perf_counter() - t0) * 1000)
                if r.status_code in (429, 503):  # shed or limited: come back when told
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
    if len(values) == 1:  # quantiles needs two points
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--generator", choices=("extractive", "llama"), default="extractive")
    args = ap.parse_args()
    proc = tmp = None
    url = args.url
    if url is None:
        proc, url, tmp = _start_server(Path(__file__).resolve().parents[1], args.generator)
    elif urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("only loopback targets are allowed")
    try:
        latencies: dict[int, list[float]] = {}
        health: list[float] = []
        codes: Counter[int] = Counter()
        stop_at = time.monotonic() + args.seconds
        await asyncio.gather(
            _health_probe(url, stop_at, health),
            *(_client(url, stop_at, latencies, codes, i) for i in range(args.clients)),
        )
        _report(args, codes, latencies, health)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()


def _report(
    args: argparse.Namespace,
    codes: Counter[int],
    latencies: dict[int, list[float]],
    health: list[float],
) -> None:
    total = sum(codes.values())
    errors = sum(n for c, n in codes.items() if c not in (200, 429, 503))
    answered, shed = latencies.get(200, []), latencies.get(503, [])
    print(f"CPU flags: {_cpu_flags()}")
    print(
        f"clients {args.clients}, {args.seconds:.0f} s, {args.generator}: {total} requests "
        f"({total / args.seconds:.1f}/s), status counts {dict(codes)}"
    )
    print(f"answers per minute: {len(answered) * 60 / args.seconds:.1f}")
    print(f"errors (other than 429 and 503): {errors}")
    print(
        f"/chat answered ms: p50 {_pct(answered, 50):.0f}  p95 {_pct(answered, 95):.0f}  "
        f"p99 {_pct(answered, 99):.0f}"
    )
    if shed:
        print(
            f"503 (shed) ms: p50 {_pct(shed, 50):.0f}  p95 {_pct(shed, 95):.0f}  max {max(shed):.0f}"
        )
    print(f"/health latency under load ms: p50 {_pct(health, 50):.1f}  max {max(health):.1f}")


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    wanted = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    return " ".join(sorted(wanted)) or "no AVX2"


if __name__ == "__main__":
    asyncio.run(main())
