"""What the routes share, and the FastAPI dependencies that hand it to them.

One :class:`AppState` per app lives on ``app.state.ragserve``; routes never reach for it
directly but declare what they need (``StateDep``, ``PipelineDep``, ``AdminDep``), so a route
module can be read, and tested, on its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from pydantic import SecretStr

from ragserve.config import Settings
from ragserve.errors import BadRequestError, EmptyQueryError
from ragserve.pipeline import RagPipeline
from ragserve.runtime.priority import BackgroundWorker
from ragserve.serving.api.errors import NotReadyError
from ragserve.serving.api.metrics import Metrics
from ragserve.serving.api.security import ForbiddenError, RateLimitedError, RateLimiter, check_key
from ragserve.types import Answer

__all__ = [
    "AdminDep",
    "AppState",
    "PipelineDep",
    "StateDep",
    "check_client",
    "check_query",
    "get_pipeline",
    "get_state",
    "guard_chat",
    "require_admin",
    "secret",
]


class AppState:
    """The loaded pipeline and everything per-app that requests share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pipeline: RagPipeline | None = None
        self.ingestor: Any = None
        self.metrics = Metrics()
        # Bounds how many CPU-bound pipeline calls (answers, streams) run at once;
        # anyio's default pool would let 40 of them fight over two cores.
        self.cpu_pool = anyio.CapacityLimiter(settings.api.workers)
        # Uploads and deletes run on their own lowered thread, not in cpu_pool: an answer never
        # waits behind an upload for a slot, and the OS prefers chat's threads for the CPU.
        self.writer = BackgroundWorker(nice=settings.ingest.ingest_nice, name="writer")
        self.rate = RateLimiter(
            settings.api.rate_limit_per_minute, storage=settings.api.rate_limit_storage
        )
        self.ready = False
        # One writer at a time from this process; the Ingestor's file lock covers other ones.
        self.write_lock = threading.Lock()
        self.streams = 0

    @contextlib.contextmanager
    def open_stream(self, release: Callable[[], None] | None = None) -> Iterator[None]:
        """Counted, so a graceful shutdown can wait for answers still streaming; at its end
        the stream's admission (``RagPipeline.admission``) is released."""
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1
            if release is not None:
                release()

    def observe_answer(self, answer: Answer) -> None:
        for stage, ms in answer.timings.items():
            self.metrics.stage.labels(stage).observe(ms / 1000)
        # By kind: a clarifying question or a small-talk reply is not a refusal.
        self.metrics.answers.labels(answer.kind).inc()
        if answer.kind == "refusal":
            self.metrics.refusals.inc()


def get_state(request: Request) -> AppState:
    return request.app.state.ragserve  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


def get_pipeline(state: StateDep) -> RagPipeline:
    """The loaded pipeline, or a typed 503 while models load or the app shuts down."""
    if state.pipeline is None or not state.ready:
        raise NotReadyError()
    return state.pipeline


PipelineDep = Annotated[RagPipeline, Depends(get_pipeline)]


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def require_admin(request: Request, state: StateDep) -> None:
    key = secret(state.settings.api.admin_api_key)
    if key is None:
        raise ForbiddenError(
            "Admin routes are disabled because no admin API key is configured.",
            hint="Set RAGSERVE_ADMIN_API_KEY to enable document management over HTTP.",
        )
    check_key(request, key, "admin")


AdminDep = Annotated[None, Depends(require_admin)]


def guard_chat(state: AppState, request: Request, query: str) -> None:
    """Key, rate limit and query size of every chat route, in that order (the history's
    checks are :func:`~ragserve.serving.api.conversation.conversation_turns`)."""
    check_client(state, request)
    check_query(state.settings, query)


def check_client(state: AppState, request: Request) -> None:
    check_key(request, secret(state.settings.api.chat_api_key), "chat")
    client = request.client.host if request.client else "unknown"
    try:
        state.rate.check(client)
    except RateLimitedError:
        state.metrics.rate_limited.inc()
        raise


def check_query(settings: Settings, query: str) -> None:
    if not query.strip():
        raise EmptyQueryError()
    if len(query) > settings.api.max_query_chars:
        raise BadRequestError(
            f"The query is {len(query)} characters; the limit is {settings.api.max_query_chars}.",
            hint="Ask a shorter question.",
        )
