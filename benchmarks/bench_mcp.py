"""Latency of the MCP tools against a direct /chat call, over the bundled sample corpus.

Starts a real `ragserve serve` (uvicorn, MCP enabled) and a `ragserve mcp` subprocess, both warm,
then sends the same ten questions sequentially through each path and prints p50/p95 of the
wall time the client sees:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_mcp.py [--rounds 5]

Every request spells its question differently (trailing '?'s), so the pipeline's result cache
never answers; each path gets its own spellings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from ragserve.config import Settings
from ragserve.embedding import SentenceTransformerEmbedder
from ragserve.ingest.pipeline import Ingestor
from ragserve.stores.local import LocalIndex

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "corpus"
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


def _ingest(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    embedder = SentenceTransformerEmbedder()
    embedder.warm_up()
    index = LocalIndex.from_settings(settings)
    index.open(settings.embedding_model, embedder.dimension)
    Ingestor(settings, index, embedder).ingest_paths([SAMPLES], progress=False)
    index.close()


def _spellings(rounds: int, offset: int) -> list[str]:
    return [q.rstrip("?") + "?" * (offset + r + 1) for r in range(rounds) for q in QUESTIONS]


def _summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"{name:34} n={len(ms):3}  p50 {statistics.median(ms):7.1f} ms  p95 {q[18]:7.1f} ms"


async def _timed(calls: list[Callable[[], Awaitable[object]]]) -> list[float]:
    await calls[0]()  # warm: the first call of a session pays for connection set-up
    out = []
    for call in calls[1:]:
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _mcp_calls(client: Client, tool: str, queries: list[str]) -> list[float]:
    arg = "query" if tool == "search" else "question"

    def call(q: str) -> Callable[[], Awaitable[object]]:
        async def run() -> object:
            result = await client.call_tool(
                tool, {arg: q, **({"k": 5} if tool == "search" else {})}
            )
            assert not result.is_error, result.content
            return result

        return run

    return await _timed([call(q) for q in queries])


async def _over_http(base: str, key: str, tool: str, queries: list[str]) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        return await _mcp_calls(client, tool, queries)


async def _over_stdio(env: dict[str, str], queries: list[str]) -> list[float]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "ragserve.cli", "mcp"], env=env, cwd=REPO
    )
    async with Client(params) as client:
        return await _mcp_calls(client, "search", queries)


def _chat(base: str, key: str, queries: list[str]) -> list[float]:
    out = []
    with httpx.Client(headers={"X-API-Key": key}, timeout=300) as http:
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            http.post(f"{base}/chat", json={"query": q}).raise_for_status()
            if i:
                out.append((time.perf_counter() - t0) * 1000)
    return out


@contextlib.contextmanager
def _server(env: dict[str, str]):  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ragserve.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    key = "bench-key"
    with tempfile.TemporaryDirectory() as tmp:
        _ingest(Path(tmp))
        env = {
            **os.environ,
            "RAGSERVE_DATA_DIR": tmp,
            "RAGSERVE_MCP_ENABLED": "true",
            "RAGSERVE_CHAT_API_KEY": key,
            "RAGSERVE_RATE_LIMIT_PER_MINUTE": "100000",
            "HF_HUB_OFFLINE": "1",
        }
        r = args.rounds
        with _server(env) as base:
            chat = _chat(base, key, _spellings(r, 0))
            search_http = anyio.run(_over_http, base, key, "search", _spellings(r, r))
            ask_http = anyio.run(_over_http, base, key, "ask", _spellings(r, 2 * r))
        search_stdio = anyio.run(_over_stdio, env, _spellings(r, 0))
    print("sequential, warm, sample corpus, extractive generator:")
    print(_summary("POST /chat (full answer)", chat))
    print(_summary("MCP search, streamable HTTP", search_http))
    print(_summary("MCP ask, streamable HTTP", ask_http))
    print(_summary("MCP search, stdio (ragserve mcp)", search_stdio))


if __name__ == "__main__":
    main()
