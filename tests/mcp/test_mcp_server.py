"""The MCP server as assistants reach it, driven by the SDK's own client: ``ragserve mcp`` as a
subprocess over stdio, and ``/mcp`` on a real ``ragserve serve`` (uvicorn on 127.0.0.1) over
streamable HTTP. Both answer from the sample corpus with the real models."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

from ragserve.config import Settings

REPO = Path(__file__).resolve().parents[2]
CHAT_KEY = "test-chat-key"
TIMEOUT_QUESTION = "How do I set a timeout on an httpx client?"

Connect = Callable[[], contextlib.AbstractAsyncContextManager[Client]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path, embedder) -> Path:  # type: ignore[no-untyped-def]
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores.local import LocalIndex

    data_dir = tmp_path_factory.mktemp("mcp-index")
    settings = Settings(data_dir=data_dir)
    index = LocalIndex.from_settings(settings)
    index.open(settings.ingest.embedding_model, embedder.dimension)
    summary = Ingestor(settings, index, embedder).ingest_paths([sample_corpus], progress=False)
    assert not summary.failed, summary.failed
    index.close()
    return data_dir


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RAGSERVE_DATA_DIR": str(data_dir),
        "RAGSERVE_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def http_server(index_dir: Path) -> Iterator[str]:
    """``ragserve serve`` with MCP enabled and a chat key; yields its base URL once ready."""
    port = _free_port()
    env = _env(
        index_dir,
        RAGSERVE_MCP_ENABLED="true",
        RAGSERVE_CHAT_API_KEY=CHAT_KEY,
        RAGSERVE_RATE_LIMIT_PER_MINUTE="100000",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragserve.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(base: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ragserve serve exited: {proc.stderr.read() if proc.stderr else ''}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError("ragserve serve did not become ready")


def stdio_connect(data_dir: Path) -> Connect:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "ragserve.cli.main", "mcp"],
        env=_env(data_dir),
        cwd=REPO,
    )
    return lambda: Client(params)


def http_connect(base: str, key: str = CHAT_KEY, statuses: list[int] | None = None) -> Connect:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async def record(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {key}"}
        timeout = httpx2.Timeout(30, read=300)
        hooks = {"response": [record]}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks=hooks) as http,
            Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
        ):
            yield client

    return connect


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest, index_dir: Path) -> Connect:
    if request.param == "stdio":
        return stdio_connect(index_dir)
    return http_connect(request.getfixturevalue("http_server"))


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.anyio
async def test_tools_answer_from_the_sample_corpus(connect: Connect) -> None:
    async with connect() as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"search", "ask", "list_documents"}
        assert all(t.description and t.input_schema["type"] == "object" for t in tools.values())
        k = tools["search"].input_schema["properties"]["k"]
        assert (k["minimum"], k["maximum"]) == (1, 100)
        assert tools["ask"].input_schema["required"] == ["question"]

        found = await client.call_tool("search", {"query": TIMEOUT_QUESTION, "k": 3})
        assert not found.is_error, _text(found)
        passages = found.structured_content["passages"]
        assert len(passages) == 3 and [p["rank"] for p in passages] == [1, 2, 3]
        assert passages[0]["source"].endswith("timeouts.md")
        assert passages[0]["score"] >= passages[1]["score"] >= passages[2]["score"]
        assert {"source", "page", "section", "score", "text"} <= set(passages[0])

        asked = await client.call_tool("ask", {"question": TIMEOUT_QUESTION})
        answer = asked.structured_content
        assert not asked.is_error and not answer["refused"] and answer["answer"]
        assert answer["citations"]
        assert all(c["source"].endswith("timeouts.md") for c in answer["citations"])


@pytest.mark.anyio
async def test_documents_are_listed_and_readable_as_resources(connect: Connect) -> None:
    async with connect() as client:
        listed = (await client.call_tool("list_documents", {})).structured_content
        assert listed["count"] == 13
        doc = next(d for d in listed["documents"] if d["id"].endswith("httpx/timeouts.md"))
        resources = (await client.list_resources()).resources
        assert doc["uri"] in {str(r.uri) for r in resources}
        read = await client.read_resource(doc["uri"])
        assert "timeout" in read.contents[0].text.lower()
        assert len(read.contents[0].text) > 1000


BAD_CALLS = [
    ("nope", {"query": "x"}, "Unknown tool 'nope'"),
    ("search", {}, "query: Field required"),
    ("search", {"query": 42}, "query: Input should be a valid string"),
    ("search", {"query": "timeouts", "k": "many"}, "k: Input should be a valid integer"),
    ("search", {"query": "timeouts", "k": True}, "k: Input should be a valid integer"),
    ("search", {"query": "timeouts", "k": 2.5}, "k: Input should be a valid integer"),
    ("search", {"query": "timeouts", "k": 0}, "greater than or equal to 1"),
    ("search", {"query": "timeouts", "k": 101}, "less than or equal to 100"),
    ("ask", {}, "question: Field required"),
    ("ask", {"question": ""}, "at least 1 character"),
    ("ask", {"question": "   "}, "The query is empty"),
    ("ask", {"question": "why? " * 20_000}, "at most 2000 characters"),
    ("ask", {"question": "hi", "history": "yesterday"}, "history: Input should be a valid list"),
]


@pytest.mark.anyio
async def test_bad_input_gives_error_results_and_the_server_stays_up(connect: Connect) -> None:
    async with connect() as client:
        for name, arguments, expected in BAD_CALLS:
            result = await client.call_tool(name, arguments)
            assert result.is_error, (name, arguments)
            assert expected in _text(result), (name, _text(result))
            assert len(_text(result)) < 1000  # the 100 kB question is not echoed back
        still = await client.call_tool("search", {"query": TIMEOUT_QUESTION, "k": 1})
        assert not still.is_error and len(still.structured_content["passages"]) == 1


def test_http_needs_the_chat_key_and_the_configured_host(http_server: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    missing = httpx.post(f"{http_server}/mcp", json=body, headers=headers)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    wrong = httpx.post(
        f"{http_server}/mcp", json=body, headers={**headers, "Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and "not valid" in wrong.json()["message"]
    rebound = httpx.post(
        f"{http_server}/mcp",
        json=body,
        headers={**headers, "Authorization": f"Bearer {CHAT_KEY}", "Host": "evil.example"},
    )
    assert rebound.status_code == 421 and rebound.json()["error"] == "misdirected_request"
    # The same key still opens /chat: one key for both.
    chat = httpx.post(
        f"{http_server}/chat",
        json={"query": TIMEOUT_QUESTION},
        headers={"X-API-Key": CHAT_KEY},
        timeout=60,
    )
    assert chat.status_code == 200


@pytest.mark.anyio
async def test_http_client_with_a_wrong_key_is_refused(http_server: str) -> None:
    statuses: list[int] = []
    with pytest.raises(Exception):  # noqa: B017 - the SDK reports it as its own error group
        async with http_connect(http_server, key="wrong", statuses=statuses)() as client:
            await client.list_tools()
    assert statuses and set(statuses) == {401}


def test_mcp_is_not_mounted_unless_enabled(index_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from ragserve.serving.api.app import create_app

    off = TestClient(create_app(Settings(data_dir=index_dir)))  # no lifespan: nothing loads
    assert off.post("/mcp", json={}).status_code == 404


def test_stdout_carries_only_protocol_messages(index_dir: Path) -> None:
    """Model loading and logs must not corrupt the channel: every stdout line is JSON-RPC."""
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    done = subprocess.run(
        [sys.executable, "-m", "ragserve.cli.main", "mcp", "--verbose"],
        input=json.dumps(hello) + "\n",
        env=_env(index_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.splitlines()
    assert lines, done.stderr
    replies = [json.loads(line) for line in lines]
    assert all(r["jsonrpc"] == "2.0" for r in replies)
    assert replies[0]["result"]["serverInfo"]["name"] == "ragserve"
    assert done.returncode == 0, done.stderr


def test_guard_checks_host_then_key_then_rate() -> None:
    """The HTTP guard alone, in front of a stand-in app: no models needed."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ragserve.serving.api.security import RateLimiter
    from ragserve.serving.mcp import _allowed_hosts, _Guard

    settings = Settings(chat_api_key=CHAT_KEY, mcp_allowed_hosts=["testserver"])
    inner = PlainTextResponse("reached")
    guard = _Guard(inner, settings, _allowed_hosts(settings), RateLimiter(1))
    client = TestClient(Starlette(routes=[Route("/mcp", guard, methods=["GET", "POST"])]))
    key = {"Authorization": f"Bearer {CHAT_KEY}"}

    assert client.post("/mcp", headers={**key, "Host": "evil.example"}).status_code == 421
    assert client.post("/mcp", headers={"Host": "localhost:8000"}).status_code == 401
    assert client.post("/mcp", headers={**key, "Host": "localhost:8000"}).text == "reached"
    limited = client.post("/mcp", headers=key)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"] == "rate_limited"
    assert client.get("/mcp", headers=key).text == "reached"  # only messages (POSTs) count


@pytest.mark.parametrize(
    "doc_id", ["docs/a b.md", "docs/what?.md", "/abs/path/été#1.md", "100%.md"]
)
def test_document_uris_round_trip(doc_id: str) -> None:
    from mcp.shared.uri_template import UriTemplate

    from ragserve.serving.mcp import DOCUMENT_URI, _document_uri

    assert UriTemplate.parse(DOCUMENT_URI).match(_document_uri(doc_id)) == {"doc_id": doc_id}


class _FakePipeline:
    """Only what ``ask`` reads; records the history each question came with."""

    def __init__(self) -> None:
        from ragserve.runtime.admission import AnswerAdmission

        self.histories: list[list[tuple[str, str]]] = []
        self.admission = AnswerAdmission(1)

    def answer(self, question: str, history: Any = ()) -> Any:
        from ragserve.types import Answer

        self.histories.append([(m.role, m.content) for m in history])
        return Answer(question, "Do you mean A or B?", [], kind="clarify", standalone_query="q")


BAD_HISTORIES = [
    ([{"role": "assistant", "content": "Hello"}], "history[0].role"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "history[1].role"),
    ([{"role": "user", "content": " "}], "history[0].content: history[0].content is empty"),
    (
        [{"role": "user", "content": "x" * 100_000}, {"role": "assistant", "content": "ok"}],
        "the limit is 20000",
    ),
]


@pytest.mark.fast
@pytest.mark.anyio
@pytest.mark.parametrize(("history", "expected"), BAD_HISTORIES)
async def test_ask_refuses_a_bad_history_by_the_api_rule_and_keeps_serving(
    tmp_path: Path, history: list[dict[str, str]], expected: str
) -> None:
    from ragserve.serving.mcp import build_server

    pipeline = _FakePipeline()
    server = build_server(lambda: pipeline, Settings(data_dir=tmp_path))  # type: ignore[arg-type,return-value]
    async with Client(server) as client:
        bad = await client.call_tool("ask", {"question": "And then?", "history": history})
        assert bad.is_error and expected in _text(bad), _text(bad)
        assert len(_text(bad)) < 1000 and not pipeline.histories
        turns = [{"role": "system", "content": "be brief"}] + [
            {"role": r, "content": f"{r} {i}"} for i in range(30) for r in ("user", "assistant")
        ]
        good = await client.call_tool("ask", {"question": "And then?", "history": turns})
        assert not good.is_error, _text(good)
        assert good.structured_content["kind"] == "clarify"
        assert good.structured_content["standalone_query"] == "q"
        # 60 turns: the most recent max_history_turns exchanges, the system message left out.
        kept = pipeline.histories[-1]
        assert len(kept) == 2 * Settings().api.max_history_turns
        assert kept[-1] == ("assistant", "assistant 29") and kept[0][0] == "user"


@pytest.mark.fast
@pytest.mark.anyio
async def test_ask_beyond_the_admission_bound_is_a_busy_tool_error(tmp_path: Path) -> None:
    """MCP's ``ask`` counts against the same bound as /chat (issue 37): with the one place
    taken, the tool says the server is busy instead of queueing the question unseen."""
    from ragserve.serving.mcp import build_server

    pipeline = _FakePipeline()
    server = build_server(lambda: pipeline, Settings(data_dir=tmp_path))  # type: ignore[arg-type,return-value]
    async with Client(server) as client:
        taken = pipeline.admission.enter()
        busy = await client.call_tool("ask", {"question": "What is it?"})
        assert busy.is_error and "answering 1 questions already" in _text(busy), _text(busy)
        assert not pipeline.histories
        taken()
        good = await client.call_tool("ask", {"question": "What is it?"})
        assert not good.is_error, _text(good)
    assert pipeline.admission.in_flight == 0
