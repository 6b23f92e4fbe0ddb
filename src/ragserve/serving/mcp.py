"""The pipeline as Model Context Protocol tools, for assistants (desktop chat apps, IDE agents).

``ragserve mcp`` serves it over stdio; with ``mcp_enabled`` the HTTP app also mounts it at
``/mcp`` (streamable HTTP) behind the chat API key. Both transports come from the official
``mcp`` SDK; this module only declares the tools and the resources and turns ragserve's typed
errors into MCP error results the model can read.

Tools: ``search`` (ranked passages), ``ask`` (grounded answer with citations), ``list_documents``.
Resources: every indexed document, as ``ragserve://documents/{id}``.
"""

import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import anyio
from mcp.server.mcpserver import MCPServer, ResourceSecurity
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp_types import CallToolResult, InputRequiredResult
from mcp_types import Resource as MCPResource
from pydantic import BaseModel, Field, ValidationError

from ragserve.config import Settings
from ragserve.errors import EmptyQueryError, RagServeError
from ragserve.serving.api.conversation import (
    MAX_TURN_CHARS,
    InvalidHistoryError,
    conversation_turns,
)
from ragserve.types import AnswerKind, Hit

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ragserve.pipeline import RagPipeline
    from ragserve.serving.api.security import RateLimiter

# No `from __future__ import annotations` here: the SDK reads each tool's signature, and the
# tools' argument types are built at run time from the settings (query-length limit).

__all__ = ["DOCUMENT_URI", "AppState", "build_server", "mount_mcp", "run_stdio"]

log = logging.getLogger("ragserve.mcp")

DOCUMENT_URI = "ragserve://documents/{+doc_id}"
MAX_K = 100
PipelineGetter = Callable[[], "RagPipeline | None"]
T = TypeVar("T")


# --- what the tools return (each model is also the tool's output schema) ----------------------


class Passage(BaseModel):
    rank: int = Field(description="1 is the best match.")
    id: str = Field(description="Chunk id.")
    document: str = Field(description="Id of the document the passage comes from.")
    source: str = Field(description="File the passage comes from.")
    page: int | None = Field(description="Page number (PDFs), when known.")
    section: str | None = Field(description="Section heading, when known.")
    score: float = Field(description="Retrieval score; higher is better.")
    text: str


class SearchResult(BaseModel):
    query: str
    passages: list[Passage]
    timings: dict[str, float] = Field(description="Milliseconds spent in the pipeline ('total').")


class CitationOut(BaseModel):
    number: int = Field(description="The [n] marker in the answer; n-th entry of 'sources'.")
    source: str
    page: int | None
    section: str | None
    span: str = Field(description="The source sentence that supports the cited claim.")


class AskResult(BaseModel):
    answer: str
    refused: bool = Field(
        description="True when the documents do not hold the answer (the answer then says so)."
    )
    kind: AnswerKind = Field(
        "answer",
        description="answer (from the sources), refusal (refused is true), clarify (a question "
        "back naming the readings the documents hold: ask the user, never a refusal) or reply "
        "(a short reply to small talk).",
    )
    standalone_query: str | None = Field(
        None, description="What was searched: the question made standalone with the history."
    )
    citations: list[CitationOut]
    sources: list[Passage] = Field(description="The passages the answer was grounded on.")
    timings: dict[str, float] = Field(description="Milliseconds per pipeline stage.")


class DocumentOut(BaseModel):
    id: str
    uri: str = Field(description="Read the document's text as this MCP resource.")
    source: str
    title: str | None
    chunks: int


class DocumentList(BaseModel):
    count: int
    documents: list[DocumentOut]


class Turn(BaseModel):
    # Order, emptiness, length and trimming are checked by conversation_turns, as for /chat.
    role: Literal["user", "assistant", "system"]
    content: str = Field(description=f"The turn's text (at most {MAX_TURN_CHARS} characters).")


# --- the server --------------------------------------------------------------------------------


class RagMCPServer(MCPServer):
    """MCPServer whose resource list is the live index and whose argument errors say what to do."""

    def __init__(self, get_pipeline: PipelineGetter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._get_pipeline = get_pipeline

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Any = None
    ) -> CallToolResult | InputRequiredResult:
        known = [t.name for t in await self.list_tools()]
        if name not in known:
            raise ToolError(
                f"Unknown tool '{name}'. This server has: {', '.join(known)} (see tools/list)."
            )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_argument_problems(name, exc.__cause__)) from exc.__cause__
            raise

    async def list_resources(self) -> list[MCPResource]:
        pipeline = self._get_pipeline()
        if pipeline is None:
            return []
        docs = await anyio.to_thread.run_sync(pipeline.index.documents)
        return [
            MCPResource(
                uri=_document_uri(d.doc_id),
                name=d.doc_id,
                title=d.title or d.source,
                description=f"Indexed document {d.source} ({d.chunks} chunks).",
                mime_type="text/plain",
            )
            for d in docs
        ]


def _argument_problems(tool: str, error: ValidationError) -> str:
    # Field names and pydantic's reason, never the rejected value: it may be 100 kB of text.
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors()
    )
    return (
        f"Invalid arguments for '{tool}': {problems}. "
        "Send arguments that match the tool's input schema (tools/list shows it)."
    )


def build_server(
    get_pipeline: PipelineGetter,
    settings: Settings,
    *,
    limiter: anyio.CapacityLimiter | None = None,
) -> RagMCPServer:
    """The MCP server over whatever pipeline ``get_pipeline`` returns (None while loading).

    Pipeline calls are blocking CPU work: they run in worker threads bounded by ``limiter``
    (the HTTP app passes its own, so MCP and /chat share one budget).
    """
    server = RagMCPServer(
        get_pipeline,
        name="ragserve",
        title="ragserve: your documents",
        version="0.1.0",
        instructions=(
            "Answers questions about the documents indexed in this ragserve instance. Use "
            "'search' for ranked passages to read yourself, 'ask' for a grounded answer with "
            "numbered citations (refused=true means the documents do not hold the answer), "
            "'list_documents' to see what is indexed; each document is also a resource."
        ),
        log_level="WARNING",
    )
    tools = _Tools(get_pipeline, settings, limiter or anyio.CapacityLimiter(settings.api.workers))
    tools.register(server)
    return server


# --- tool handlers -----------------------------------------------------------------------------


class _Tools:
    def __init__(
        self, get_pipeline: PipelineGetter, settings: Settings, limiter: anyio.CapacityLimiter
    ) -> None:
        self.get_pipeline = get_pipeline
        self.settings = settings
        self.limiter = limiter

    def register(self, server: MCPServer) -> None:
        limit = self.settings.api.max_query_chars
        turns = self.settings.api.max_history_turns
        query_t = _text_argument(limit, "What to look for, in natural language")
        k_t = Annotated[
            int,
            # Strict: a boolean is not a count (a number sent as a JSON string still parses).
            Field(
                ge=1, le=MAX_K, strict=True, description=f"How many passages to return (1-{MAX_K})."
            ),
        ]
        question_t = _text_argument(limit, "The question")
        history_t = Annotated[
            list[Turn] | None,
            Field(
                description="Earlier turns of the conversation, oldest first, alternating user "
                "and assistant and starting with user, so follow-up questions are understood "
                f"(past {turns} exchanges the oldest are dropped).",
            ),
        ]

        async def search(query: query_t, k: k_t = 5) -> SearchResult:
            """Search the indexed documents. Returns up to k passages, best first, each with its
            source file, page, section and score. Use it to read the evidence yourself."""
            return await self.search(query, k)

        async def ask(question: question_t, history: history_t = None) -> AskResult:
            """Answer a question from the indexed documents only. Returns the answer with [n]
            citation markers, the cited sources, and refused=true when the documents do not
            contain the answer (do not guess then)."""
            return await self.ask(question, history or [])

        async def list_documents() -> DocumentList:
            """List the indexed documents (id, source file, title, chunk count, resource URI)."""
            return await self.list_documents()

        async def read_document(doc_id: str) -> str:
            """The text of one indexed document, as it was indexed."""
            return await self.read_document(doc_id)

        for tool in (search, ask, list_documents):
            server.add_tool(tool, structured_output=True)
        server.resource(
            DOCUMENT_URI,
            name="document",
            mime_type="text/plain",
            # The id is only a key in the manifest, never opened as a path; ids of files
            # ingested from outside the working directory are absolute paths.
            security=ResourceSecurity(exempt_params={"doc_id"}),
        )(read_document)

    async def _run(self, fn: Callable[..., T], *args: Any, admit: bool = False) -> T:
        """``fn(pipeline, *args)`` in the CPU pool; with ``admit``, an answer counted against
        the pipeline's admission bound first (refused at once beyond it, as /chat's)."""
        pipeline = self.get_pipeline()
        if pipeline is None:
            raise ToolError("ragserve is still loading its models. Retry in a few seconds.")
        try:
            release = pipeline.admission.enter() if admit else (lambda: None)
            try:
                return await anyio.to_thread.run_sync(
                    partial(fn, pipeline, *args), limiter=self.limiter
                )
            finally:
                release()
        except RagServeError as exc:
            raise ToolError(str(exc)) from exc

    async def search(self, query: str, k: int) -> SearchResult:
        _require_text(query)

        def run(pipeline: "RagPipeline") -> tuple[list[Hit], float]:
            started = time.perf_counter()
            hits = pipeline.search(pipeline.process(query), top_k=k)
            return hits, (time.perf_counter() - started) * 1000

        hits, ms = await self._run(run)
        return SearchResult(query=query, passages=_passages(hits), timings={"total": round(ms, 2)})

    async def ask(self, question: str, history: list[Turn]) -> AskResult:
        _require_text(question)
        try:
            turns = conversation_turns(history, self.settings.api.max_history_turns)
        except InvalidHistoryError as exc:
            raise ToolError(f"{exc.field}: {exc}") from exc

        def run(pipeline: "RagPipeline") -> Any:
            return pipeline.answer(question, turns)

        answer = await self._run(run, admit=True)
        return AskResult(
            answer=answer.text,
            refused=answer.refused,
            kind=answer.kind,
            standalone_query=answer.standalone_query,
            citations=[
                CitationOut(
                    number=c.number, source=c.source, page=c.page, section=c.section, span=c.span
                )
                for c in answer.citations
            ],
            sources=_passages(answer.sources),
            timings=answer.timings,
        )

    async def list_documents(self) -> DocumentList:
        docs = await self._run(lambda p: p.index.documents())
        return DocumentList(
            count=len(docs),
            documents=[
                DocumentOut(
                    id=d.doc_id,
                    uri=_document_uri(d.doc_id),
                    source=d.source,
                    title=d.title,
                    chunks=d.chunks,
                )
                for d in docs
            ],
        )

    async def read_document(self, doc_id: str) -> str:
        pipeline = self.get_pipeline()
        if pipeline is None:
            raise ResourceNotFoundError("ragserve is still loading its models; retry shortly.")
        text = await anyio.to_thread.run_sync(
            _document_text, pipeline, doc_id, limiter=self.limiter
        )
        if text is None:
            raise ResourceNotFoundError(
                f"No indexed document with id '{doc_id}'. The 'list_documents' tool lists them."
            )
        return text


def _text_argument(limit: int, what: str) -> Any:
    """A required text argument whose schema carries the API's query-length limit."""
    description = f"{what} (at most {limit} characters)."
    return Annotated[str, Field(min_length=1, max_length=limit, description=description)]


def _require_text(text: str) -> None:
    # The schema already refuses "", but not a question made only of spaces.
    if not text.strip():
        raise ToolError(str(EmptyQueryError()))


def _passages(hits: list[Hit]) -> list[Passage]:
    return [
        Passage(
            rank=i,
            id=h.chunk.id,
            document=h.chunk.doc_id,
            source=h.chunk.source,
            page=h.chunk.page,
            section=h.chunk.section,
            score=round(h.score, 6),
            text=h.chunk.text,
        )
        for i, h in enumerate(hits, 1)
    ]


def _document_uri(doc_id: str) -> str:
    # Ids are paths: keep their slashes readable, percent-encode the rest (spaces, '?', '#').
    return "ragserve://documents/" + quote(doc_id, safe="/")


def _document_text(pipeline: "RagPipeline", doc_id: str) -> str | None:
    """Rebuild a document from its chunks, which hold exact character spans of its text.

    The index has no per-document read, so this scans every chunk: fine for the documents a
    person reads one at a time, linear in the size of the collection.
    """
    if pipeline.index.document_hash(doc_id) is None:
        return None
    chunks = sorted(
        (c for batch in pipeline.index.iter_chunks() for c in batch if c.doc_id == doc_id),
        key=lambda c: c.chunk_index,
    )
    parts: list[str] = []
    end = 0
    for c in chunks:
        if c.char_start > end and parts:
            parts.append("\n")  # whitespace-only spans are not stored as chunks
        if c.char_end > end:
            parts.append(c.text[max(0, end - c.char_start) :])
            end = c.char_end
    return "".join(parts)


# --- stdio -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Stdout is the protocol channel: anything a library prints while models load goes to
    stderr instead (the SDK diverts it the same way once it serves)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_stdio(settings: Settings) -> None:
    """Serve MCP on stdin/stdout until the client closes the pipe."""
    from ragserve.pipeline import RagPipeline

    with _stdout_to_stderr():
        pipeline = RagPipeline(settings)
        pipeline.warm_up()
    server = build_server(lambda: pipeline, settings)
    log.info("serving MCP over stdio: collection '%s'", settings.index.collection)
    try:
        anyio.run(server.run_stdio_async)
    finally:
        pipeline.close()


# --- streamable HTTP, mounted on the FastAPI app -----------------------------------------------


class AppState(Protocol):
    """What ``mount_mcp`` reads from the HTTP app's state (``ragserve.serving.api.state.AppState``)."""

    settings: Settings
    pipeline: "RagPipeline | None"
    ready: bool
    cpu_pool: anyio.CapacityLimiter
    rate: "RateLimiter"


def mount_mcp(app: "FastAPI", state: AppState) -> None:
    """Mount the MCP endpoint at ``/mcp`` when ``settings.api.mcp_enabled``.

    Tool calls share the app's worker pool and its models. Requests need the chat API key
    (when one is set) and a Host header naming the configured host, and count against the
    chat rate limit. The SDK's session manager runs inside the app's lifespan, which this wraps.
    """
    settings = state.settings
    if not settings.api.mcp_enabled:
        return
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = _allowed_hosts(settings)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[p for h in hosts for p in (h, f"{h}:*")],
        allowed_origins=[*settings.api.cors_origins, *(f"http://{h}:*" for h in hosts)],
    )
    server = build_server(
        lambda: state.pipeline if state.ready else None, settings, limiter=state.cpu_pool
    )
    server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=security,
        host=settings.api.host,
        max_request_body_size=settings.api.max_body_bytes,
    )
    sessions = server.session_manager
    guarded = _Guard(StreamableHTTPASGIApp(sessions), settings, hosts, state.rate)
    app.add_route("/mcp", guarded, methods=["GET", "POST", "DELETE"], include_in_schema=False)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state, sessions.run():
            yield state

    app.router.lifespan_context = lifespan


_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _allowed_hosts(settings: Settings) -> list[str]:
    host = f"[{settings.api.host}]" if ":" in settings.api.host else settings.api.host
    names = [host, *settings.api.mcp_allowed_hosts]
    if host in _LOOPBACK:
        names += [n for n in _LOOPBACK if n != host]
    return names


class _Guard:
    """The chat API key and the Host check in front of the SDK's endpoint, answering with the
    same JSON errors as the rest of the API."""

    def __init__(
        self, app: "ASGIApp", settings: Settings, hosts: list[str], rate: "RateLimiter | None"
    ) -> None:
        self.app = app
        self.settings = settings
        self.hosts = set(hosts)
        self.rate = rate

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        from fastapi.responses import JSONResponse
        from starlette.requests import Request

        from ragserve.serving.api.security import RateLimitedError, check_key

        request = Request(scope)
        key = self.settings.api.chat_api_key
        try:
            self._check_host(request.headers.get("host", ""))
            check_key(request, key.get_secret_value() if key else None, "MCP")
            if self.rate is not None and request.method == "POST":
                # Every MCP message is a POST: a tool call costs what a /chat request does.
                self.rate.check(request.client.host if request.client else "unknown")
        except RagServeError as exc:
            headers = {}
            if isinstance(exc, RateLimitedError):
                headers["retry-after"] = str(exc.retry_after)
            response = JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_host(self, header: str) -> None:
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        if header in self.hosts or name in self.hosts:
            return
        raise MisdirectedError(
            f"This MCP endpoint answers only on {', '.join(sorted(self.hosts))}.",
            hint="Connect through the configured host, or add the name to "
            "RAGSERVE_MCP_ALLOWED_HOSTS.",
        )


class MisdirectedError(RagServeError):
    status_code = 421
    code = "misdirected_request"
