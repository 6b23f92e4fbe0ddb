"""Latency of the MCP tools against a direct /chat call, over the bundled sample corpus.

Starts a real `ragserve serve` (uvicorn, MCP enabled) and a `ragserve mcp` subprocess, both warm,
then sends ten questions through each path in turn and prints p50/p95 of the wall time the
client sees, and of that time less the pipeline's own (the transport and protocol overhead):

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
from ragserve.embedding.embedder import SentenceTransformerEmbedder
from ragserve.ingest.pipeline import Ingestor
from ragserve.stores.local import LocalIndex

REPO = Path(__file__).resolve().parents[1]
# The same corpus and questions as bench_chat, so the MCP and HTTP figures compare.
from bench_chat import QUESTIONS, SAMPLES  # noqa: E402  (a sibling script, on sys.path)


def _ingest(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    embedder = SentenceTransformerEmbedder()
    embedder.warm_up()
    index = LocalIndex.from_settings(settings)
    index.open(settings.ingest.embedding_model, embedder.dimension)
    Ingestor(settings, index, embedder).ingest_paths([SAMPLES], progress=False)
    index.close()


def _spelled(question: str, n: int) -> str:
    return question.rstrip("?") + "?" * n


def _summary(name: str, wall: list[float], overhead: list[float]) -> str:
    def p50_p95(values: list[float]) -> str:
        return f"{statistics.median(values):7.1f} / {statistics.quantiles(values, n=20)[18]:7.1f}"

    return f"{name:34} {len(wall):4}  {p50_p95(wall)}   {p50_p95(overhead)}"


Call = Callable[[str], Awaitable[float]]
"""Sends one question; returns the milliseconds the server's pipeline reported for it."""
Times = dict[str, tuple[list[float], list[float]]]


def _tool(client: Client, tool: str) -> Call:
    async def call(q: str) -> float:
        args = {"query": q, "k": 5} if tool == "search" else {"question": q}
        result = await client.call_tool(tool, args)
        assert not result.is_error and result.structured_content, result.content
        return result.structured_content["timings"]["total"]

    return call


def _chat(http: httpx2.AsyncClient, base: str) -> Call:
    async def call(q: str) -> float:
        response = await http.post(f"{base}/chat", json={"query": q})
        return response.raise_for_status().json()["timings"]["total"]

    return call


async def _interleaved(paths: dict[str, Call], rounds: int) -> Times:
    """Each question goes through every path back to back, so drifting machine load (the
    CPU is shared) weighs on all paths alike; each path gets its own spellings."""
    times: Times = {name: ([], []) for name in paths}
    for call in paths.values():  # warm: connection set-up, first-call costs
        await call(_spelled(QUESTIONS[0], 99))
    for r in range(rounds):
        for q in QUESTIONS:
            for i, (name, call) in enumerate(paths.items()):
                t0 = time.perf_counter()
                pipeline_ms = await call(_spelled(q, 1 + r * len(paths) + i))
                wall = (time.perf_counter() - t0) * 1000
                times[name][0].append(wall)
                times[name][1].append(wall - pipeline_ms)
    return times


async def _measure(base: str, key: str, env: dict[str, str], rounds: int) -> Times:
    headers = {"Authorization": f"Bearer {key}"}
    stdio = StdioServerParameters(
        command=sys.executable, args=["-m", "ragserve.cli.main", "mcp"], env=env, cwd=REPO
    )
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as over_http,
        Client(stdio) as over_stdio,
    ):
        paths = {
            "POST /chat (full answer)": _chat(http, base),
            "MCP ask, streamable HTTP": _tool(over_http, "ask"),
            "MCP search, streamable HTTP": _tool(over_http, "search"),
            "MCP search, stdio (ragserve mcp)": _tool(over_stdio, "search"),
        }
        return await _interleaved(paths, rounds)


@contextlib.contextmanager
def _server(env: dict[str, str]):  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ragserve.cli.main", "serve", "--port", str(port)]
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
        with _server(env) as base:
            times = anyio.run(_measure, base, key, env, args.rounds)
    print(f"sequential, interleaved, warm; sample corpus; extractive; {os.cpu_count()} CPUs")
    print(f"{'path':34} {'n':>4}  {'wall p50 / p95 ms':>17}   {'overhead p50 / p95 ms':>21}")
    for name, (wall, overhead) in times.items():
        print(_summary(name, wall, overhead))
    print("overhead: wall time less the pipeline time the server reports (transport, protocol)")


if __name__ == "__main__":
    main()
