"""``POST /chat`` and ``POST /chat/stream``: an answer with sources, as JSON or SSE."""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from ragserve.errors import RagServeError
from ragserve.pipeline import RagPipeline
from ragserve.serving.api.conversation import conversation_turns
from ragserve.serving.api.schemas import ChatRequest, ChatResponse
from ragserve.serving.api.state import AppState, PipelineDep, StateDep, guard_chat
from ragserve.serving.api.streaming import pipeline_events
from ragserve.types import Message

__all__ = ["router"]

log = logging.getLogger("ragserve.serving.api")

router = APIRouter(tags=["chat"])

_SSE = {200: {"content": {"text/event-stream": {}}}}


@router.post("/chat", response_model=ChatResponse, responses=_SSE)
async def chat(body: ChatRequest, request: Request, state: StateDep, pipeline: PipelineDep) -> Any:
    """Answer a question with sources. With ``"stream": true``, Server-Sent Events:
    ``token`` events (``{"text"}``: verified text only, each extending the last), then one
    ``done`` event with the full response (its ``answer`` extends the tokens with citation
    markers; ``kind`` says answer, refusal, clarify or reply), or an ``error`` event."""
    guard_chat(state, request, body.query)
    history = conversation_turns(body.history, state.settings.api.max_history_turns)
    pipeline.check_capacity()  # a full queue is a 503 before any wait (or stream) starts
    release = pipeline.admission.enter()
    if body.stream:
        events = _sse(state, pipeline, body.query, history, release)
        weakref.finalize(events, release)  # a stream never started still gives its place back
        return EventSourceResponse(events, ping=15, send_timeout=30)
    try:
        answer = await anyio.to_thread.run_sync(
            pipeline.answer, body.query, history, limiter=state.cpu_pool
        )
    finally:
        release()
    state.observe_answer(answer)
    return ChatResponse.from_answer(answer)


@router.post("/chat/stream", responses=_SSE)
async def chat_stream(
    body: ChatRequest, request: Request, state: StateDep, pipeline: PipelineDep
) -> Any:
    """Same as ``/chat`` with ``"stream": true``."""
    body.stream = True
    return await chat(body, request, state, pipeline)


async def _sse(
    state: AppState,
    pipeline: RagPipeline,
    query: str,
    history: list[Message],
    release: Callable[[], None],
) -> AsyncIterator[dict[str, str]]:
    with state.open_stream(release):
        try:
            async for event in pipeline_events(pipeline, query, history, state.cpu_pool):
                if event.kind == "token":
                    state.metrics.llm_tokens.inc()
                    yield {"event": "token", "data": json.dumps({"text": event.text})}
                elif event.answer is not None:
                    state.observe_answer(event.answer)
                    done = ChatResponse.from_answer(event.answer).model_dump_json()
                    yield {"event": "done", "data": done}
        except RagServeError as exc:
            yield {"event": "error", "data": json.dumps(exc.to_dict())}
        except Exception:
            # The status line went out with the first byte: the error travels as an event.
            log.exception("stream failed")
            failed = {"error": "internal_error", "message": "The answer stream failed."}
            yield {"event": "error", "data": json.dumps(failed)}
