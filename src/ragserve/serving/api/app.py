"""The FastAPI application: chat (JSON, SSE, OpenAI-compatible), documents, health, metrics.

``create_app`` only wires the parts together: the lifespan that loads the models, middleware,
error handlers and one router per concern (``ragserve.serving.api.routes``). Routes get the pipeline
and the shared state through FastAPI dependencies (``ragserve.serving.api.state``). The CPU-bound
pipeline runs in a bounded thread pool (``settings.api.workers``) so the event loop stays free for
health checks and open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ragserve.config import Settings, load_settings
from ragserve.ingest.pipeline import Ingestor
from ragserve.pipeline import RagPipeline
from ragserve.serving.api.errors import ERROR_RESPONSES, install_error_handlers
from ragserve.serving.api.middleware import observe_requests
from ragserve.serving.api.routes import chat, documents, openai, ops, pages
from ragserve.serving.api.state import AppState

__all__ = ["create_app"]

log = logging.getLogger("ragserve.serving.api")

PipelineFactory = Callable[[Settings], RagPipeline]

# How long shutdown waits for open answer streams (uvicorn has stopped accepting by then).
_DRAIN_SECONDS = 10.0


def create_app(
    settings: Settings | None = None, *, pipeline_factory: PipelineFactory = RagPipeline
) -> FastAPI:
    """The app. ``pipeline_factory`` builds the pipeline in the lifespan; tests pass a fake."""
    settings = settings or load_settings()
    state = AppState(settings)
    app = FastAPI(
        title="ragserve",
        version="0.1.0",
        summary="Grounded, cited answers over your documents.",
        lifespan=_lifespan(state, pipeline_factory),
        responses=ERROR_RESPONSES,
    )
    app.state.ragserve = state
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.api.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["content-type", "authorization", "x-api-key", "x-request-id"],
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )
    app.middleware("http")(observe_requests(state))
    install_error_handlers(app)
    for module in (pages, ops, chat, openai, documents):
        app.include_router(module.router)
    # Further surfaces mount here, one call each: after the routers so they see the same
    # state, inside the same middleware and handlers.
    if settings.api.mcp_enabled:  # MCP tools at /mcp (streamable HTTP); see ragserve.serving.mcp
        from ragserve.serving.mcp import mount_mcp  # the SDK loads only when asked for

        mount_mcp(app, state)
    return app


def _lifespan(
    state: AppState, pipeline_factory: PipelineFactory
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = state.settings
        pipeline = pipeline_factory(settings)
        await anyio.to_thread.run_sync(pipeline.warm_up)
        state.pipeline = pipeline
        gate = getattr(pipeline, "foreground", None)  # test fakes have none
        state.ingestor = Ingestor(settings, pipeline.index, pipeline.embedder, foreground=gate)
        state.ready = True
        log.info(
            "ready: collection '%s', generator '%s'",
            settings.index.collection,
            settings.generation.generator,
        )
        try:
            yield
        finally:
            state.ready = False
            await _drain_streams(state)
            await anyio.to_thread.run_sync(state.writer.shutdown)  # a write in progress ends
            pipeline.close()

    return lifespan


async def _drain_streams(state: AppState) -> None:
    """Graceful shutdown: let open answer streams finish, for a bounded time."""
    with anyio.move_on_after(_DRAIN_SECONDS):
        while state.streams:
            await asyncio.sleep(0.1)
