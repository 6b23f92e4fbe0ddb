"""Request and response models of the HTTP API (and ``ragserve ask --json``)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from ragserve.serving.api.conversation import MAX_TURN_CHARS
from ragserve.types import Answer, AnswerKind, DocumentRecord

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "CitationOut",
    "DocumentOut",
    "ErrorBody",
    "ReadyOut",
    "SourceOut",
    "answer_fields",
    "completion_response",
]


class ChatMessage(BaseModel):
    role: Literal["user", "assistant", "system"]
    # Checked with the turn's order in serving.api.conversation (one rule for every face):
    # an empty or over-long turn is a 400 naming it, not a 422 from here.
    content: str = Field(
        description=f"The turn's text (1 to {MAX_TURN_CHARS} characters; system messages are "
        "left out of the conversation)."
    )


class ChatRequest(BaseModel):
    query: str = Field(description="The question.", examples=["How do I set a timeout?"])
    history: list[ChatMessage] = Field(
        default_factory=list,
        description="Earlier turns, oldest first, alternating user and assistant and starting "
        "with user (else 400 invalid_history). Past max_history_turns exchanges the oldest are "
        "dropped, not refused.",
    )
    stream: bool = Field(False, description="Answer as Server-Sent Events.")


class SourceOut(BaseModel):
    id: str
    source: str
    page: int | None
    section: str | None
    title: str | None = None
    score: float
    text: str
    char_start: int | None = None
    char_end: int | None = None


class CitationOut(BaseModel):
    number: int
    id: str
    source: str
    page: int | None
    section: str | None
    span: str


class ChatResponse(BaseModel):
    answer: str
    sources: list[SourceOut]
    citations: list[CitationOut] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")
    refused: bool = False
    refusal_reason: str | None = Field(
        None,
        description="Why refused: out_of_scope, no_sources, low_support, model, unsupported or "
        "unverified.",
    )
    kind: AnswerKind = Field(
        "answer",
        description="What the reply is: answer (from the sources), refusal (refused is true), "
        "clarify (a question back naming the readings the sources hold; never a refusal) or "
        "reply (a short conversational reply to small talk, without sources).",
    )
    intent: str = "question"
    standalone_query: str | None = Field(
        None, description="What was searched: the turn made standalone with the conversation."
    )
    invalid_citations: list[int] = Field(default_factory=list)

    @classmethod
    def from_answer(cls, answer: Answer) -> ChatResponse:
        return cls(
            answer=answer.text,
            sources=[
                SourceOut(
                    id=h.chunk.id,
                    source=h.chunk.source,
                    page=h.chunk.page,
                    section=h.chunk.section,
                    title=h.chunk.title,
                    score=round(h.score, 6),
                    text=h.chunk.text,
                    char_start=h.chunk.char_start,
                    char_end=h.chunk.char_end,
                )
                for h in answer.sources
            ],
            citations=[
                CitationOut(
                    number=c.number,
                    id=c.chunk_id,
                    source=c.source,
                    page=c.page,
                    section=c.section,
                    span=c.span,
                )
                for c in answer.citations
            ],
            timings=answer.timings,
            refused=answer.refused,
            refusal_reason=answer.refusal_reason,
            kind=answer.kind,
            intent=str(answer.intent),
            standalone_query=answer.standalone_query,
            invalid_citations=answer.invalid_citations,
        )


class ErrorBody(BaseModel):
    error: str
    message: str
    hint: str | None = None
    field: str | None = Field(
        None, description="The request field at fault, when one is (history[1].role)."
    )


class ReadyOut(BaseModel):
    status: Literal["ready"]
    collection: str
    documents: int
    chunks: int
    generator: str


class DocumentOut(BaseModel):
    id: str
    source: str
    chunks: int
    title: str | None = None
    content_hash: str
    ingested_at: float

    @classmethod
    def from_record(cls, record: DocumentRecord) -> DocumentOut:
        return cls(
            id=record.doc_id,
            source=record.source,
            chunks=record.chunks,
            title=record.title,
            content_hash=record.content_hash,
            ingested_at=record.ingested_at,
        )


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completions request that applies to document chat."""

    model: str = "ragserve"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    user: str | None = None


def completion_response(answer: Answer, model: str) -> dict[str, Any]:
    body = ChatResponse.from_answer(answer)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "sources": [s.model_dump() for s in body.sources],
        "citations": [c.model_dump() for c in body.citations],
        **answer_fields(answer),
    }


def answer_fields(answer: Answer) -> dict[str, Any]:
    """What the OpenAI route adds beside OpenAI's fields (the non-stream body and the last
    stream chunk alike), as ChatResponse names them."""
    return {
        "timings": answer.timings,
        "refused": answer.refused,
        "refusal_reason": answer.refusal_reason,
        "kind": answer.kind,
        "standalone_query": answer.standalone_query,
    }
