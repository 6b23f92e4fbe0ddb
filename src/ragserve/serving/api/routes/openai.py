"""The OpenAI chat completions API over the documents (``sources`` is an extra field)."""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from ragserve.errors import RagServeError
from ragserve.pipeline import RagPipeline
from ragserve.serving.api.conversation import conversation_turns
from ragserve.serving.api.schemas import (
    ChatCompletionRequest,
    answer_fields,
    completion_response,
)
from ragserve.serving.api.state import AppState, PipelineDep, StateDep, check_client, check_query
from ragserve.serving.api.streaming import pipeline_events
from ragserve.types import Answer, Message

__all__ = ["router"]

router = APIRouter(tags=["openai"])


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: StateDep, pipeline: PipelineDep
) -> Any:
    """OpenAI-compatible chat over the documents; ``sources`` is an extra field."""
    check_client(state, request)
    # The messages are the conversation: the same rules as /chat's history, with the question
    # as their last user turn.
    turns = conversation_turns(
        body.messages,
        state.settings.api.max_history_turns,
        field="messages",
        ends_with_user=True,
    )
    query, history = turns[-1].content, turns[:-1]
    check_query(state.settings, query)
    pipeline.check_capacity()  # a full queue is a 503 before any wait (or stream) starts
    release = pipeline.admission.enter()
    if body.stream:
        chunks = _completion_chunks(state, pipeline, query, history, body.model, release)
        weakref.finalize(chunks, release)  # a stream never started still gives its place back
        return EventSourceResponse(chunks, ping=15)
    try:
        answer = await anyio.to_thread.run_sync(
            pipeline.answer, query, history, limiter=state.cpu_pool
        )
    finally:
        release()
    state.observe_answer(answer)
    return completion_response(answer, body.model)


@router.get("/v1/models")
async def models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": "ragserve", "object": "model", "owned_by": "ragserve"}],
    }


class _ChunkWriter:
    """``chat.completion.chunk`` bodies that share one id and creation time."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def __call__(
        self, delta: dict[str, Any], finish: str | None = None, **extra: Any
    ) -> dict[str, str]:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return {"data": json.dumps(body)}

    def final(self, answer: Answer) -> dict[str, str]:
        full = completion_response(answer, self.model)
        return self(
            {},
            "stop",
            sources=full["sources"],
            citations=full["citations"],
            answer=answer.text,
            **answer_fields(answer),
        )


async def _completion_chunks(
    state: AppState,
    pipeline: RagPipeline,
    query: str,
    history: list[Message],
    model: str,
    release: Callable[[], None],
) -> AsyncIterator[dict[str, str]]:
    chunk = _ChunkWriter(model)
    with state.open_stream(release):
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for event in pipeline_events(pipeline, query, history, state.cpu_pool):
                if event.kind == "token":
                    yield chunk({"content": event.text})
                elif event.answer is not None:
                    state.observe_answer(event.answer)
                    yield chunk.final(event.answer)
        except RagServeError as exc:
            yield {"data": json.dumps({"error": exc.to_dict()})}
    yield {"data": "[DONE]"}
