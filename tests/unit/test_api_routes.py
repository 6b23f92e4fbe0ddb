"""The HTTP API's wiring over a fake pipeline: routes, dependencies, error mapping, middleware.

The real pipeline's behaviour is ``tests/api``'s job; here every route answers in milliseconds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings
from ragserve.serving.api.app import create_app

ADMIN = {"Authorization": "Bearer admin-key"}


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path,
        "admin_api_key": "admin-key",
        "rate_limit_per_minute": 10_000,
    }
    return Settings(**(base | overrides))


@pytest.fixture
def client(tmp_path: Path, fake_pipeline_factory: Any) -> Iterator[TestClient]:
    app = create_app(_settings(tmp_path), pipeline_factory=fake_pipeline_factory)
    with TestClient(app) as c:
        yield c


def _sse_events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def test_before_the_models_load_chat_gets_a_typed_503(tmp_path: Path) -> None:
    # No ``with``: the lifespan never runs, as for a request that beats the model load.
    c = TestClient(create_app(_settings(tmp_path)))
    assert c.get("/health").json() == {"status": "ok"}
    for r in (
        c.get("/ready"),
        c.post("/chat", json={"query": "hi"}),
        c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}),
        c.get("/documents", headers=ADMIN),
    ):
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "not_ready" and r.json()["hint"]
        assert int(r.headers["retry-after"]) > 0


def test_chat_returns_the_answer_shape(client: TestClient) -> None:
    r = client.post("/chat", json={"query": "How do I set a timeout?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"].startswith("Pass timeout")
    assert body["sources"][0]["source"] == "docs/timeouts.md"
    assert body["citations"][0]["number"] == 1
    assert set(body) >= {"answer", "sources", "citations", "timings", "refused", "intent"}
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/chat", "/chat/stream"])
def test_streams_tokens_then_one_done(client: TestClient, path: str) -> None:
    r = client.post(path, json={"query": "How do I set a timeout?", "stream": True})
    events = _sse_events(r.text)
    names = [n for n, _ in events]
    assert names.count("done") == 1 and names[-1] == "done" and names[0] == "token"
    text = "".join(json.loads(d)["text"] for n, d in events if n == "token")
    assert text.strip() == json.loads(events[-1][1])["answer"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat", {"query": "How do I set a timeout?", "stream": True}),
        ("/chat/stream", {"query": "How do I set a timeout?"}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi?"}], "stream": True},
        ),
    ],
)
def test_a_full_generation_queue_is_503_with_retry_after_before_a_stream_opens(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    client.app.state.ragserve.pipeline.busy = True  # type: ignore[attr-defined]
    r = client.post(path, json=body)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "generation_busy" and int(r.headers["retry-after"]) > 0
    client.app.state.ragserve.pipeline.busy = False  # type: ignore[attr-defined]
    assert client.post(path, json=body).status_code == 200, "the server stays up"


def test_openai_completion_and_stream(client: TestClient) -> None:
    messages = [{"role": "user", "content": "How do I set a timeout?"}]
    body = client.post("/v1/chat/completions", json={"messages": messages}).json()
    assert body["object"] == "chat.completion" and body["sources"]
    assert body["choices"][0]["message"]["content"].startswith("Pass timeout")
    r = client.post("/v1/chat/completions", json={"messages": messages, "stream": True})
    data = [d for _, d in _sse_events(r.text)]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1, "every chunk of one answer shares its id"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["sources"]


def test_openai_last_message_must_be_the_users(client: TestClient) -> None:
    messages = [{"role": "assistant", "content": "Hello"}]
    r = client.post("/v1/chat/completions", json={"messages": messages})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_metrics_reads_the_index_off_the_event_loop(client: TestClient) -> None:
    index = client.app.state.ragserve.pipeline.index  # type: ignore[attr-defined]
    client.post("/chat", json={"query": "How do I set a timeout?"})
    loop_thread = client.portal.call(threading.get_ident)  # type: ignore[union-attr]
    text = client.get("/metrics").text
    assert "ragserve_index_documents 1.0" in text and 'stage="retrieve"' in text
    assert index.info_threads and loop_thread not in index.info_threads


def test_request_errors_are_json(client: TestClient) -> None:
    r = client.post("/chat", json={"query": 5})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = client.post("/chat", json={"query": "   "})
    assert r.status_code == 422 and r.json()["error"] == "empty_query"
    r = client.post("/chat", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert client.get("/static/../../etc/passwd").status_code == 404


def test_a_bad_request_id_is_replaced(client: TestClient) -> None:
    assert client.get("/health", headers={"x-request-id": "ok-id.1"}).headers["x-request-id"] == (
        "ok-id.1"
    )
    replaced = client.get("/health", headers={"x-request-id": "bad id\n"}).headers["x-request-id"]
    assert replaced != "bad id\n" and len(replaced) == 16


def test_documents_need_the_admin_key(client: TestClient) -> None:
    assert client.get("/documents").status_code == 401
    docs = client.get("/documents", headers=ADMIN).json()
    assert [d["id"] for d in docs] == ["docs/timeouts.md"]
    assert client.delete("/documents/docs/timeouts.md", headers=ADMIN).json() == {
        "deleted": "docs/timeouts.md"
    }
    r = client.delete("/documents/docs/timeouts.md", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"] == "document_not_found"


def test_admin_routes_are_off_without_a_key(tmp_path: Path, fake_pipeline_factory: Any) -> None:
    settings = _settings(tmp_path, admin_api_key=None)
    with TestClient(create_app(settings, pipeline_factory=fake_pipeline_factory)) as c:
        r = c.get("/documents", headers=ADMIN)
        assert r.status_code == 403 and "RAGSERVE_ADMIN_API_KEY" in r.json()["hint"]


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, fake_pipeline_factory: Any) -> None:
    settings = _settings(tmp_path, rate_limit_per_minute=1)
    with TestClient(create_app(settings, pipeline_factory=fake_pipeline_factory)) as c:
        assert c.post("/chat", json={"query": "q"}).status_code == 200
        r = c.post("/chat", json={"query": "q"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "ragserve_rate_limited_total 1.0" in c.get("/metrics").text


def test_an_unexpected_error_is_a_json_500(tmp_path: Path, fake_pipeline_factory: Any) -> None:
    class Broken(fake_pipeline_factory):  # type: ignore[misc, valid-type]
        def answer(self, *args: Any) -> Any:
            raise RuntimeError("boom")

    app = create_app(_settings(tmp_path), pipeline_factory=Broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/chat", json={"query": "q"})
        assert r.status_code == 500 and r.json()["error"] == "internal_error"
        assert "boom" not in r.text, "internals never reach the client"


def test_shutdown_closes_the_pipeline(tmp_path: Path, fake_pipeline_factory: Any) -> None:
    app = create_app(_settings(tmp_path), pipeline_factory=fake_pipeline_factory)
    with TestClient(app):
        pipeline = app.state.ragserve.pipeline
    assert pipeline.closed and not app.state.ragserve.ready
