"""The HTTP API end to end, with the real pipeline over the bundled sample corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings
from ragserve.serving.api.app import create_app

ADMIN = {"Authorization": "Bearer test-admin-key"}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path, embedder) -> Path:  # type: ignore[no-untyped-def]
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores.local import LocalIndex

    data_dir = tmp_path_factory.mktemp("api-index")
    settings = Settings(data_dir=data_dir)
    index = LocalIndex.from_settings(settings)
    index.open(embedder.fingerprint, embedder.dimension)
    summary = Ingestor(settings, index, embedder).ingest_paths([sample_corpus], progress=False)
    assert not summary.failed, summary.failed
    index.close()
    return data_dir


def _client(index_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(
        data_dir=index_dir,
        admin_api_key="test-admin-key",
        rate_limit_per_minute=10_000,
        **overrides,
    )  # type: ignore[arg-type]
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(index_dir: Path) -> Iterator[TestClient]:
    with _client(index_dir, cors_origins=["https://docs.example.com"]) as c:
        yield c


def _sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def test_chat_answers_with_sources_and_timings(client: TestClient) -> None:
    r = client.post("/chat", json={"query": "How do I set a timeout on an httpx client?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] and not body["refused"]
    assert body["sources"], "an answer must return its sources"
    assert {"id", "source", "page", "section", "score", "text"} <= set(body["sources"][0])
    assert any("timeouts.md" in s["source"] for s in body["sources"])
    assert {"query", "retrieve", "generate", "total"} <= set(body["timings"])
    assert r.headers["x-request-id"]


def test_chat_stream_sends_tokens_then_done(client: TestClient) -> None:
    r = client.post("/chat", json={"query": "What exceptions does httpx raise?", "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    names = [n for n, _ in events]
    assert names[-1] == "done" and names.count("done") == 1
    assert "token" in names and names.index("token") < names.index("done")
    done = events[-1][1]
    assert "".join(d["text"] for n, d in events if n == "token").strip()
    assert done["sources"] and done["answer"]


def test_chitchat_skips_retrieval(client: TestClient) -> None:
    body = client.post("/chat", json={"query": "hello!"}).json()
    assert body["intent"] == "chitchat" and body["sources"] == []
    assert "retrieve" not in body["timings"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"query": ""}, 422),
        ({"query": "   "}, 422),
        ({}, 422),
        ({"query": 5}, 422),
        ({"query": "x" * 5000}, 400),
        ({"query": "q", "history": [{"role": "user", "content": "x"}] * 100}, 400),
    ],
)
def test_bad_chat_requests_get_json_errors(client: TestClient, payload: dict, status: int) -> None:
    r = client.post("/chat", json=payload)
    assert r.status_code == status
    assert {"error", "message"} <= set(r.json())


def test_malformed_json_body(client: TestClient) -> None:
    r = client.post("/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["chunks"] > 0
    client.post("/chat", json={"query": "How do proxies work in httpx?"})
    text = client.get("/metrics").text
    for name in (
        "ragserve_http_requests_total",
        "ragserve_http_request_seconds_bucket",
        "ragserve_stage_seconds_bucket",
        "ragserve_index_chunks",
    ):
        assert name in text
    assert 'stage="retrieve"' in text


def test_admin_routes_need_the_key(client: TestClient) -> None:
    assert client.get("/documents").status_code == 401
    assert client.get("/documents", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.get("/documents", headers=ADMIN)
    assert r.status_code == 200 and any(d["id"].endswith("timeouts.md") for d in r.json())


def test_admin_routes_disabled_without_a_configured_key(index_dir: Path) -> None:
    with TestClient(create_app(Settings(data_dir=index_dir))) as c:
        r = c.get("/documents", headers=ADMIN)
        assert r.status_code == 403 and "RAGSERVE_ADMIN_API_KEY" in r.json()["hint"]


def test_upload_list_delete(client: TestClient) -> None:
    files = [
        (
            "files",
            (
                "../../etc/passwd-notes.md",
                b"# Llamas\n\nLlamas hum when they are calm.\n",
                "text/markdown",
            ),
        ),
        ("files", ("blob.txt", bytes(range(256)) * 4, "text/plain")),
    ]
    r = client.post("/documents", files=files, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ingested"] == 1 and body["failed"] == 1
    names = {Path(f["path"]).name: f for f in body["files"]}
    assert "passwd-notes.md" in names, "the upload name must be reduced to a safe base name"
    assert names["blob.txt"]["status"] == "failed" and names["blob.txt"]["error"]
    docs = client.get("/documents", headers=ADMIN).json()
    doc_id = next(d["id"] for d in docs if d["id"].endswith("passwd-notes.md"))
    assert "/etc/" not in doc_id
    answer = client.post("/chat", json={"query": "What do llamas do when they are calm?"}).json()
    assert any(s["id"] and "passwd-notes" in s["source"] for s in answer["sources"])
    assert client.delete(f"/documents/{doc_id}", headers=ADMIN).status_code == 200
    assert client.delete(f"/documents/{doc_id}", headers=ADMIN).status_code == 404


def test_cors_allows_only_configured_origins(client: TestClient) -> None:
    pre = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    ok = client.options("/chat", headers={"Origin": "https://docs.example.com", **pre})
    assert ok.headers.get("access-control-allow-origin") == "https://docs.example.com"
    bad = client.options("/chat", headers={"Origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in bad.headers


def test_rate_limit_returns_429_with_retry_after(index_dir: Path) -> None:
    settings = Settings(data_dir=index_dir, rate_limit_per_minute=2)
    with TestClient(create_app(settings)) as c:
        codes = [c.post("/chat", json={"query": "hi"}).status_code for _ in range(3)]
        assert codes[:2] == [200, 200] and codes[2] == 429
        r = c.post("/chat", json={"query": "hi"})
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"] == "rate_limited"


def test_chat_key_when_configured(index_dir: Path) -> None:
    with _client(index_dir, chat_api_key="chat-key") as c:
        assert c.post("/chat", json={"query": "hi"}).status_code == 401
        ok = c.post("/chat", json={"query": "hi"}, headers={"X-API-Key": "chat-key"})
        assert ok.status_code == 200


def test_openai_client_talks_to_our_route(client: TestClient) -> None:
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    out = oc.chat.completions.create(
        model="ragserve", messages=[{"role": "user", "content": "How do I use HTTP/2 with httpx?"}]
    )
    assert out.choices[0].message.content
    assert out.model_extra and out.model_extra["sources"]
    stream = oc.chat.completions.create(
        model="ragserve",
        stream=True,
        messages=[{"role": "user", "content": "How do I use HTTP/2 with httpx?"}],
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip()
