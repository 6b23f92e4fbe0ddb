"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ragserve.errors import RagServeError
from ragserve.serving.api.errors import NotReadyError, StoreUnreachableError
from ragserve.serving.api.schemas import ErrorBody, ReadyOut
from ragserve.serving.api.state import StateDep

__all__ = ["router"]

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", response_model=ReadyOut, responses={503: {"model": ErrorBody}})
async def ready(state: StateDep) -> ReadyOut:
    """Readiness: models loaded and the index reachable."""
    if not state.ready or state.pipeline is None:
        raise NotReadyError()
    try:
        info = await anyio.to_thread.run_sync(state.pipeline.index.info)
    except RagServeError as exc:
        raise StoreUnreachableError(exc.message, hint=exc.hint) from exc
    return ReadyOut(
        status="ready",
        collection=info.collection,
        documents=info.documents,
        chunks=info.chunks,
        generator=state.settings.generation.generator,
    )


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    pipeline = state.pipeline
    if pipeline is not None:
        # The index may be on disk or a remote database: never block the event loop on it.
        try:
            info = await anyio.to_thread.run_sync(pipeline.index.info)
        except RagServeError:
            pass  # the gauges keep their last value; /ready reports the store's state
        else:
            state.metrics.index_documents.set(info.documents)
            state.metrics.index_chunks.set(info.chunks)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
