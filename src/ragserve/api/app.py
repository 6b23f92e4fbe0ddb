"""The FastAPI application: chat (JSON, SSE, OpenAI-compatible), documents, health, metrics.

Models load once, in the lifespan. The CPU-bound pipeline runs in a bounded thread pool
(``settings.workers``) so the event loop stays free for health checks and open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse

from ragserve.api.logs import request_id_var
from ragserve.api.metrics import Metrics
from ragserve.api.schemas import (
    ChatCompletionRequest,
    ChatRequest,
    ChatResponse,
    DocumentOut,
    ErrorBody,
    completion_response,
)
from ragserve.api.security import ForbiddenError, RateLimitedError, RateLimiter, check_key
from ragserve.config import Settings
from ragserve.errors import BadRequestError, DocumentNotFoundError, EmptyQueryError, RagServeError
from ragserve.pipeline import RagPipeline, StreamEvent
from ragserve.types import Answer, Message

__all__ = ["create_app"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "widget"

log = logging.getLogger("ragserve.api")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 413, 415, 422, 429, 503)
}


class _State:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pipeline: RagPipeline | None = None
        self.ingestor: Any = None
        self.metrics = Metrics()
        self.limiter = anyio.CapacityLimiter(settings.workers)
        self.rate = RateLimiter(settings.rate_limit_per_minute)
        self.ready = False
        self.write_lock = threading.Lock()
        self.streams = 0


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = _State(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipeline = RagPipeline(settings)
        await anyio.to_thread.run_sync(pipeline.warm_up)
        from ragserve.ingest.pipeline import Ingestor

        state.pipeline = pipeline
        state.ingestor = Ingestor(settings, pipeline.index, pipeline.embedder)
        state.ready = True
        log.info("ready: collection '%s', generator '%s'", settings.collection, settings.generator)
        try:
            yield
        finally:
            state.ready = False
            # Graceful shutdown: let open answer streams finish (uvicorn stops accepting first).
            for _ in range(100):
                if state.streams == 0:
                    break
                await asyncio.sleep(0.1)
            pipeline.close()

    app = FastAPI(
        title="ragserve",
        version="0.1.0",
        summary="Grounded, cited answers over your documents.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.ragserve = state
    if settings.mcp_enabled:  # MCP tools at /mcp (streamable HTTP); see ragserve.mcp_server
        from ragserve.mcp_server import mount_mcp  # the SDK loads only when asked for

        mount_mcp(app, state)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["content-type", "authorization", "x-api-key", "x-request-id"],
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        if not re.fullmatch(r"[\w.-]{1,64}", rid):
            rid = uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        started = time.perf_counter()
        limit = (
            settings.max_upload_bytes
            if request.url.path.startswith("/documents")
            else settings.max_body_bytes
        )
        length = request.headers.get("content-length")
        try:
            if length and length.isdigit() and int(length) > limit:
                response: Response = _error_response(
                    413,
                    "payload_too_large",
                    f"The request body is {int(length)} bytes; the limit is {limit}.",
                    "Send a smaller request.",
                )
            else:
                response = await call_next(request)
        finally:
            request_id_var.reset(token)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        state.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        state.metrics.latency.labels(path, request.method).observe(elapsed)
        response.headers["x-request-id"] = rid
        request_id_var.set(rid)
        log.info(
            "%s %s %d",
            request.method,
            path,
            response.status_code,
            extra={"route": path, "status": response.status_code, "ms": round(elapsed * 1000, 1)},
        )
        request_id_var.set(None)
        return response

    @app.exception_handler(RagServeError)
    async def ragserve_error(request: Request, exc: RagServeError) -> Response:
        headers = {}
        if isinstance(exc, RateLimitedError):
            headers["retry-after"] = str(exc.retry_after)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        ]
        return JSONResponse(
            {
                "error": "invalid_request",
                "message": "; ".join(problems)[:2000],
                "hint": "See the request schema at /docs.",
            },
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error_response(
            500,
            "internal_error",
            f"Internal server error (request {request_id_var.get()}).",
            "Retry; if it persists, report the request id.",
        )

    # --- pages --------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index_page() -> Response:
        page = STATIC_DIR / "index.html"
        if page.exists():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<h1>ragserve</h1><p>See <a href='/docs'>/docs</a>.</p>")

    @app.get("/widget.js", include_in_schema=False)
    async def widget_js() -> Response:
        return FileResponse(STATIC_DIR / "widget.js", media_type="text/javascript")

    @app.get("/widget.css", include_in_schema=False)
    async def widget_css() -> Response:
        return FileResponse(STATIC_DIR / "widget.css", media_type="text/css")

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        path = (STATIC_DIR / name).resolve()
        if path.parent != STATIC_DIR.resolve() or not path.is_file():
            raise DocumentNotFoundError(f"No static file '{name}'.")
        return FileResponse(path)

    # --- health -------------------------------------------------------------------------------

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], responses={503: {"model": ErrorBody}})
    async def ready() -> Response:
        """Readiness: models loaded and the index reachable."""
        if not state.ready or state.pipeline is None:
            return _error_response(503, "not_ready", "Models are still loading.", "Retry soon.")
        try:
            info = await anyio.to_thread.run_sync(state.pipeline.index.info)
        except RagServeError as exc:
            return _error_response(503, "store_unreachable", exc.message, exc.hint)
        return JSONResponse(
            {
                "status": "ready",
                "collection": info.collection,
                "documents": info.documents,
                "chunks": info.chunks,
                "generator": settings.generator,
            }
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        p = state.pipeline
        if p is not None:
            with contextlib.suppress(RagServeError):
                info = p.index.info()
                state.metrics.index_documents.set(info.documents)
                state.metrics.index_chunks.set(info.chunks)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- chat ---------------------------------------------------------------------------------

    def _pipeline() -> RagPipeline:
        if state.pipeline is None or not state.ready:
            raise RagServeError("The service is starting.", hint="Retry in a few seconds.")
        return state.pipeline

    def _guard_chat(request: Request, query: str, history: list[Message]) -> None:
        check_key(request, _secret(settings.chat_api_key), "chat")
        client = request.client.host if request.client else "unknown"
        try:
            state.rate.check(client)
        except RateLimitedError:
            state.metrics.rate_limited.inc()
            raise
        if not query.strip():
            raise EmptyQueryError()
        if len(query) > settings.max_query_chars:
            raise BadRequestError(
                f"The query is {len(query)} characters; the limit is {settings.max_query_chars}.",
                hint="Ask a shorter question.",
            )
        if len(history) > 2 * settings.max_history_turns:
            raise BadRequestError(
                f"The history has {len(history)} messages; the limit is "
                f"{2 * settings.max_history_turns}.",
                hint="Send only the most recent turns.",
            )

    def _observe(answer: Answer) -> None:
        for stage, ms in answer.timings.items():
            state.metrics.stage.labels(stage).observe(ms / 1000)
        if answer.refused:
            state.metrics.refusals.inc()

    @app.post(
        "/chat",
        tags=["chat"],
        response_model=ChatResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def chat(body: ChatRequest, request: Request) -> Any:
        """Answer a question with sources. With ``"stream": true``, Server-Sent Events:
        ``token`` events (``{"text"}``), then one ``done`` event with the full response, or an
        ``error`` event."""
        history = [Message(m.role, m.content) for m in body.history if m.role != "system"]
        _guard_chat(request, body.query, history)
        pipeline = _pipeline()
        if body.stream:
            return EventSourceResponse(
                _sse(pipeline, body.query, history, request), ping=15, send_timeout=30
            )
        answer = await anyio.to_thread.run_sync(
            pipeline.answer, body.query, history, limiter=state.limiter
        )
        _observe(answer)
        return ChatResponse.from_answer(answer)

    @app.post(
        "/chat/stream", tags=["chat"], responses={200: {"content": {"text/event-stream": {}}}}
    )
    async def chat_stream(body: ChatRequest, request: Request) -> Any:
        """Same as ``/chat`` with ``"stream": true``."""
        body.stream = True
        return await chat(body, request)

    async def _sse(
        pipeline: RagPipeline, query: str, history: list[Message], request: Request
    ) -> AsyncIterator[dict[str, str]]:
        state.streams += 1
        try:
            async for event in _events(pipeline, query, history):
                if event.kind == "token":
                    state.metrics.llm_tokens.inc()
                    yield {"event": "token", "data": json.dumps({"text": event.text})}
                elif event.answer is not None:
                    _observe(event.answer)
                    yield {
                        "event": "done",
                        "data": ChatResponse.from_answer(event.answer).model_dump_json(),
                    }
        except RagServeError as exc:
            yield {"event": "error", "data": json.dumps(exc.to_dict())}
        except Exception:
            log.exception("stream failed")
            yield {
                "event": "error",
                "data": json.dumps(
                    {"error": "internal_error", "message": "The answer stream failed."}
                ),
            }
        finally:
            state.streams -= 1

    async def _events(
        pipeline: RagPipeline, query: str, history: list[Message]
    ) -> AsyncIterator[StreamEvent]:
        """Run the blocking generator in the pool; hand events to the loop as they come."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def produce() -> None:
            gen: Iterator[StreamEvent] = pipeline.stream(query, history)
            try:
                for ev in gen:
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
                    if stop.is_set():
                        break
            except BaseException as exc:  # forwarded to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                with contextlib.suppress(Exception):
                    gen.close()  # type: ignore[attr-defined]
                loop.call_soon_threadsafe(queue.put_nowait, done)

        task = asyncio.ensure_future(anyio.to_thread.run_sync(produce, limiter=state.limiter))
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # client went away: the producer stops at the next token
            with contextlib.suppress(Exception):
                await task

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """OpenAI-compatible chat over the documents; ``sources`` is an extra field."""
        turns = [Message(m.role, m.content) for m in body.messages if m.role != "system"]
        if not turns or turns[-1].role != "user":
            raise BadRequestError(
                "The last message must be from the user.",
                hint="End 'messages' with {'role': 'user', ...}.",
            )
        query, history = turns[-1].content, turns[:-1]
        _guard_chat(request, query, history)
        pipeline = _pipeline()
        if not body.stream:
            answer = await anyio.to_thread.run_sync(
                pipeline.answer, query, history, limiter=state.limiter
            )
            _observe(answer)
            return completion_response(answer, body.model)
        return EventSourceResponse(_openai_sse(pipeline, query, history, body.model), ping=15)

    async def _openai_sse(
        pipeline: RagPipeline, query: str, history: list[Message], model: str
    ) -> AsyncIterator[dict[str, str]]:
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(
            delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None
        ) -> dict[str, str]:
            body = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if extra:
                body.update(extra)
            return {"data": json.dumps(body)}

        state.streams += 1
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for event in _events(pipeline, query, history):
                if event.kind == "token":
                    yield chunk({"content": event.text})
                elif event.answer is not None:
                    _observe(event.answer)
                    full = completion_response(event.answer, model)
                    yield chunk(
                        {},
                        "stop",
                        {
                            "sources": full["sources"],
                            "citations": full["citations"],
                            "answer": event.answer.text,
                        },
                    )
        except RagServeError as exc:
            yield {"data": json.dumps({"error": exc.to_dict()})}
        finally:
            state.streams -= 1
        yield {"data": "[DONE]"}

    @app.get("/v1/models", tags=["openai"])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": "ragserve", "object": "model", "owned_by": "ragserve"}],
        }

    # --- documents (admin) --------------------------------------------------------------------

    def _admin(request: Request) -> None:
        key = _secret(settings.admin_api_key)
        if key is None:
            raise ForbiddenError(
                "Admin routes are disabled because no admin API key is configured.",
                hint="Set RAGSERVE_ADMIN_API_KEY to enable document management over HTTP.",
            ) from None
        check_key(request, key, "admin")

    @app.get("/documents", tags=["documents"], response_model=list[DocumentOut])
    async def list_docs(request: Request) -> list[DocumentOut]:
        """Indexed documents (admin key)."""
        _admin(request)
        docs = await anyio.to_thread.run_sync(_pipeline().index.documents)
        return [
            DocumentOut(
                id=d.doc_id,
                source=d.source,
                chunks=d.chunks,
                title=d.title,
                content_hash=d.content_hash,
                ingested_at=d.ingested_at,
            )
            for d in docs
        ]

    @app.post("/documents", tags=["documents"])
    async def upload(request: Request, files: list[UploadFile] = File(...)) -> dict[str, Any]:
        """Upload and ingest one or many files (admin key). Per-file results; a bad file
        never blocks the others."""
        _admin(request)
        _pipeline()
        upload_dir = settings.index_dir / "uploads"
        staged: list[Path] = []
        results: list[dict[str, Any]] = []
        used: set[str] = set()
        try:
            upload_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=settings.index_dir) as tmp:
                for f in files:
                    name = _safe_filename(f.filename or "")
                    if name is not None and name in used:
                        # Two parts with one name in a request: keep both, under distinct names.
                        stem, dot, ext = name.rpartition(".")
                        n = sum(1 for u in used if u.startswith(stem or ext)) + 1
                        name = f"{stem}-{n}.{ext}" if dot else f"{ext}-{n}"
                    if name is not None:
                        used.add(name)
                    if name is None:
                        results.append(
                            {"path": f.filename, "status": "failed", "error": "invalid file name"}
                        )
                        continue
                    dest = Path(tmp) / name
                    size = 0
                    with dest.open("wb") as out:
                        while block := await f.read(1 << 20):
                            size += len(block)
                            if size > settings.max_upload_bytes:
                                break
                            out.write(block)
                    if size > settings.max_upload_bytes:
                        dest.unlink(missing_ok=True)
                        results.append(
                            {
                                "path": name,
                                "status": "failed",
                                "error": f"over the {settings.max_upload_bytes} byte limit",
                            }
                        )
                        continue
                    final = upload_dir / name
                    staged.append((dest, final))  # type: ignore[arg-type]

                def ingest() -> Any:
                    with state.write_lock:
                        for src, dst in staged:  # type: ignore[misc]
                            src.replace(dst)
                        return state.ingestor.ingest_paths(
                            [dst for _, dst in staged],  # type: ignore[misc]
                            progress=False,
                        )

                summary = await anyio.to_thread.run_sync(ingest, limiter=state.limiter)
        except OSError as exc:
            raise _storage_error(exc, settings.index_dir) from exc
        body = summary.to_dict()
        body["files"] = results + body["files"]
        body["failed"] += len(results)
        return body

    @app.delete("/documents/{doc_id:path}", tags=["documents"])
    async def delete_doc(doc_id: str, request: Request) -> dict[str, Any]:
        """Delete a document and its chunks (admin key)."""
        _admin(request)
        pipeline = _pipeline()

        def delete() -> int:
            with state.write_lock:
                return pipeline.index.delete([doc_id])

        n = await anyio.to_thread.run_sync(delete, limiter=state.limiter)
        if n == 0:
            raise DocumentNotFoundError(
                f"No document with id '{doc_id}'.", hint="GET /documents lists the ids."
            )
        return {"deleted": doc_id}

    return app


class StorageError(RagServeError):
    status_code = 507
    code = "insufficient_storage"


def _storage_error(exc: OSError, directory: Path) -> RagServeError:
    """Disk full or read-only while staging an upload: say which, keep the service up."""
    if exc.errno == 28:
        err: RagServeError = StorageError(
            f"The disk holding the index ({directory}) is full; the upload was not stored.",
            hint="Free disk space and upload again; nothing already indexed was changed.",
        )
    elif exc.errno in (13, 30):
        err = StorageError(
            f"The index directory {directory} is read-only; the upload was not stored.",
            hint="Make it writable and upload again; the index still answers questions.",
        )
        err.status_code = 503
    else:
        err = StorageError(
            f"Storing the upload failed: {exc.strerror}.",
            hint="Check the server's disk; nothing already indexed was changed.",
        )
    return err


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _safe_filename(name: str) -> str | None:
    """A base name with no path parts, control characters or leading dots."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    return base[:200] if base else None


def _error_response(status: int, code: str, message: str, hint: str | None) -> JSONResponse:
    body = {"error": code, "message": message}
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=status)
