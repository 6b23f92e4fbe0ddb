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
    messages = [
        {"role": "user", "content": "How do I set a timeout?"},
        {"role": "assistant", "content": "Pass timeout=5.0."},
    ]
    r = client.post("/v1/chat/completions", json={"messages": messages})
    assert r.status_code == 400 and r.json()["error"] == "invalid_history"
    assert r.json()["field"] == "messages" and "last message" in r.json()["message"]


# --- conversations: one rule on every face ----------------------------------------------------

Q = {"role": "user", "content": "How do I set a timeout?"}
A = {"role": "assistant", "content": "Pass timeout=5.0 to the client [1]."}
FOLLOW_UP = "And for the async client?"


class _Recorder:
    """Wraps the fake pipeline's answer/stream to keep the history each call received."""

    def __init__(self, client: TestClient) -> None:
        self.histories: list[list[tuple[str, str]]] = []
        pipeline = client.app.state.ragserve.pipeline  # type: ignore[attr-defined]
        answer, stream = pipeline.answer, pipeline.stream

        def record(history: Any) -> None:
            self.histories.append([(m.role, m.content) for m in history])

        pipeline.answer = lambda q, h=(): (record(h), answer(q, h))[1]
        pipeline.stream = lambda q, h=(): (record(h), stream(q, h))[1]


def _ask(client: TestClient, face: str, history: list[dict[str, str]]) -> Any:
    if face == "openai":
        messages = [*history, {"role": "user", "content": FOLLOW_UP}]
        return client.post("/v1/chat/completions", json={"messages": messages})
    return client.post(face, json={"query": FOLLOW_UP, "history": history})


FACES = ["/chat", "/chat/stream", "openai"]
BAD_HISTORIES = [
    # (history, the field named, words of the message)
    ([Q, Q, A], "[1].role", "by 'user' after a turn by 'user'"),
    ([A], "[0].role", "by 'assistant' as the first turn"),
    ([Q, {"role": "assistant", "content": "  "}], "[1].content", "is empty"),
    ([Q, {"role": "assistant", "content": "x" * 100_000}], "[1].content", "the limit is 20000"),
]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(("history", "field", "words"), BAD_HISTORIES)
def test_a_bad_history_is_a_typed_400_naming_the_field_and_serving_goes_on(
    client: TestClient, face: str, history: list[dict[str, str]], field: str, words: str
) -> None:
    r = _ask(client, face, history)
    assert r.status_code == 400, r.text
    body = r.json()
    name = "messages" if face == "openai" else "history"
    assert body["error"] == "invalid_history" and body["field"] == name + field
    assert words in body["message"] and body["hint"]
    assert len(r.text) < 1000, "a 100 kB turn is not echoed back"
    assert _ask(client, face, [Q, A]).status_code == 200, "the server keeps serving"


@pytest.mark.parametrize("face", ["/chat", "openai"])
def test_a_history_ending_with_a_question_is_out_of_order_too(
    client: TestClient, face: str
) -> None:
    r = _ask(client, face, [Q, A, Q])
    assert r.status_code == 400 and r.json()["error"] == "invalid_history"
    # /chat: the history's last turn; OpenAI: the question after it is the second user turn.
    expected = "messages[3].role" if face == "openai" else "history[2].role"
    assert r.json()["field"] == expected, r.json()


@pytest.mark.parametrize("face", FACES)
def test_200_turns_are_trimmed_to_the_most_recent_not_refused(
    client: TestClient, face: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = _Recorder(client)
    history = []
    for i in range(100):  # 200 turns: 100 exchanges, each numbered so the kept ones show
        history += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    with caplog.at_level("INFO", logger="ragserve.serving.api"):
        r = _ask(client, face, history)
    assert r.status_code == 200, r.text
    kept = recorder.histories[-1]
    limit = client.app.state.ragserve.settings.api.max_history_turns  # type: ignore[attr-defined]
    assert len(kept) == 2 * limit
    assert kept[0] == ("user", f"q{100 - limit}") and kept[-1] == ("assistant", "a99")
    assert any("trimmed" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("face", FACES)
def test_system_messages_are_left_out_on_every_face(client: TestClient, face: str) -> None:
    recorder = _Recorder(client)
    system = {"role": "system", "content": "You are terse."}
    r = _ask(client, face, [system, Q, system, A])
    assert r.status_code == 200, r.text
    assert recorder.histories[-1] == [("user", Q["content"]), ("assistant", A["content"])]


def _with_kind(client: TestClient, kind: str) -> None:
    """The fake pipeline's answers become clarifying questions (or another kind)."""
    pipeline = client.app.state.ragserve.pipeline  # type: ignore[attr-defined]
    make_answer = type(pipeline)(pipeline.settings).answer  # a fresh fake's, not a patched one

    def answer(query: str) -> Any:
        a = make_answer(query)
        a.kind, a.text, a.citations = kind, "Do you mean Basic plan or Team plan?", []
        a.standalone_query = f"{query} (plan)"
        return a

    pipeline.answer = lambda q, h=(): answer(q)

    def stream(q: str, h: Any = ()) -> Any:
        from ragserve.pipeline import StreamEvent

        a = answer(q)
        yield StreamEvent("token", text=a.text)
        yield StreamEvent("done", answer=a)

    pipeline.stream = stream


def test_kind_and_standalone_query_on_every_face(client: TestClient) -> None:
    _with_kind(client, "clarify")
    body = client.post("/chat", json={"query": "What does the plan cost?"}).json()
    assert body["kind"] == "clarify" and body["refused"] is False
    assert body["standalone_query"] == "What does the plan cost? (plan)"
    r = client.post("/chat/stream", json={"query": "What does the plan cost?"})
    done = json.loads(_sse_events(r.text)[-1][1])
    assert done["kind"] == "clarify" and done["standalone_query"].endswith("(plan)")
    messages = [{"role": "user", "content": "What does the plan cost?"}]
    full = client.post("/v1/chat/completions", json={"messages": messages}).json()
    assert full["kind"] == "clarify" and full["standalone_query"].endswith("(plan)")
    r = client.post("/v1/chat/completions", json={"messages": messages, "stream": True})
    last = json.loads([d for _, d in _sse_events(r.text)][-2])
    assert last["kind"] == "clarify" and last["refused"] is False
    assert last["standalone_query"].endswith("(plan)") and "refusal_reason" in last


def test_a_clarify_or_a_reply_is_never_counted_as_a_refusal(client: TestClient) -> None:
    for kind in ("clarify", "reply"):
        _with_kind(client, kind)
        client.post("/chat", json={"query": "What does the plan cost?"})
        client.post("/chat/stream", json={"query": "What does the plan cost?"})
    metrics = client.get("/metrics").text
    assert 'ragserve_answers_total{kind="clarify"} 2.0' in metrics
    assert 'ragserve_answers_total{kind="reply"} 2.0' in metrics
    assert "ragserve_refusals_total 0.0" in metrics


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


def test_answers_beyond_the_queue_bound_are_refused_at_once_on_every_route(
    tmp_path: Path, fake_pipeline_factory: Any
) -> None:
    """Issue 37: questions waited for a CPU thread before they reached the reader's queue, so
    its bound never fired. The bound (one being read + ``llm_max_waiting``) counts at the door:
    with the reader busy on a stream and an OpenAI request waiting behind it (one thread),
    the next question on any route is a 503 with Retry-After, and the places come back."""
    settings = _settings(tmp_path, llm_max_waiting=1, workers=1)
    app = create_app(settings, pipeline_factory=fake_pipeline_factory)
    with TestClient(app) as c:
        pipeline = c.app.state.ragserve.pipeline  # type: ignore[attr-defined]
        pipeline.go.clear()
        held = [
            ("/chat", {"query": "Hi?", "stream": True}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi?"}]}),
        ]
        codes: list[int] = []
        threads = [
            threading.Thread(target=lambda p=p, b=b: codes.append(c.post(p, json=b).status_code))
            for p, b in held
        ]
        for t in threads:
            t.start()
        for _ in range(500):
            if pipeline.admission.in_flight == 2:
                break
            threading.Event().wait(0.01)
        assert pipeline.admission.in_flight == 2
        for path, body in [*held, ("/chat", {"query": "Hi?"})]:
            r = c.post(path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"] == "generation_busy" and int(r.headers["retry-after"]) > 0
        pipeline.go.set()
        for t in threads:
            t.join(10)
        assert codes == [200, 200] or sorted(codes) == [200, 200]
        assert pipeline.admission.in_flight == 0
        assert c.post("/chat", json={"query": "Hi?"}).status_code == 200
