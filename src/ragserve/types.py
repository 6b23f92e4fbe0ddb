"""What flows between the pipeline stages.

Plain, typed records: a loader makes :class:`Document`, a chunker makes :class:`Chunk`,
retrieval and re-ranking pass :class:`Hit` along, generation returns :class:`Answer`.
Keeping them free of behaviour lets any stage be swapped without touching the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "Answer",
    "AnswerKind",
    "Chunk",
    "Citation",
    "Document",
    "DocumentRecord",
    "Hit",
    "Intent",
    "Message",
    "ProcessedQuery",
    "Segment",
    "content_hash",
]


def content_hash(text: str | bytes) -> str:
    """SHA-256 hex digest; the one hash used for files, documents and chunks."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Segment:
    """A span of a document's text that shares one page and one section.

    Loaders describe structure with segments instead of splitting the text, so a chunk can
    cross a page break and still point at exact character offsets of one document.
    """

    start: int
    end: int
    page: int | None = None
    section: str | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """One loaded file (or one record of a JSON Lines corpus)."""

    doc_id: str
    """Stable identity: the path relative to the ingest root, or a corpus ``_id``."""
    source: str
    """What a citation shows: a file name or path."""
    text: str
    title: str | None = None
    segments: tuple[Segment, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return content_hash(self.text)

    def segment_at(self, offset: int) -> Segment | None:
        """The segment that holds character ``offset`` (the last one starting at or before it)."""
        found: Segment | None = None
        for seg in self.segments:
            if seg.start <= offset:
                found = seg
            else:
                break
        return found


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document small enough to embed, traceable to its exact span."""

    id: str
    doc_id: str
    source: str
    text: str
    chunk_index: int
    char_start: int
    char_end: int
    content_hash: str
    page: int | None = None
    section: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def searchable_text(self) -> str:
        """What embedding, BM25 and the re-ranker read: the title gives a chunk its topic."""
        if self.title and not self.text.startswith(self.title):
            return f"{self.title}\n{self.text}"
        return self.text

    @staticmethod
    def make_id(doc_id: str, chunk_index: int, text_hash: str) -> str:
        # Deterministic, so re-ingesting the same content yields the same ids.
        return content_hash(f"{doc_id}\x00{chunk_index}\x00{text_hash}")[:32]


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """What the index's manifest keeps about one ingested document."""

    doc_id: str
    source: str
    content_hash: str
    chunks: int
    title: str | None = None
    ingested_at: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Hit:
    """A chunk with the score of the last stage that ranked it, and every stage's score."""

    chunk: Chunk
    score: float
    scores: dict[str, float] = field(default_factory=dict)

    def with_score(self, stage: str, score: float) -> Hit:
        return replace(self, score=score, scores={**self.scores, stage: score})


Role = Literal["system", "user", "assistant"]
AnswerKind = Literal["answer", "refusal", "clarify", "reply"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


class Intent(StrEnum):
    QUESTION = "question"
    CHITCHAT = "chitchat"
    OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True, slots=True)
class ProcessedQuery:
    """Output of the query stage: what retrieval should search for, and whether to search."""

    original: str
    text: str
    """The standalone query (follow-ups condensed with the history)."""
    intent: Intent = Intent.QUESTION
    expansions: tuple[str, ...] = ()
    """Extra queries or keywords retrieval may also search (multi-query / keyword expansion)."""
    resolved: str = ""
    """The user's turn with its pronoun resolved, without the subject words ``text`` adds:
    what the turn itself asks, which the context's sentence windows are centred on."""

    @property
    def focus(self) -> str:
        return self.resolved or self.original


@dataclass(frozen=True, slots=True)
class Citation:
    """A ``[n]`` marker in an answer, checked against the sources it was given."""

    number: int
    chunk_id: str
    source: str
    page: int | None
    section: str | None
    span: str
    """The sentence of the source that best supports the cited sentence."""


@dataclass(slots=True)
class Answer:
    query: str
    text: str
    sources: list[Hit]
    citations: list[Citation] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage."""
    refused: bool = False
    intent: Intent = Intent.QUESTION
    standalone_query: str | None = None
    invalid_citations: list[int] = field(default_factory=list)
    context_tokens: int = 0
    """Tokens of source text the generator read (0 when it was not called)."""
    refusal_reason: str | None = None
    """Why ``refused``: 'out_of_scope', 'no_sources', 'low_support' (the sources cover too
    little of the question, so the generator was not called), 'model' (the generator said the
    sources do not answer), 'unsupported' (its answer's words are in no source) or
    'unverified' (the source sentence its words come from is not about the question)."""
    kind: AnswerKind = "answer"
    """What the reply is: 'answer' (from the sources), 'refusal' (``refused``), 'clarify' (a
    question back, naming the readings the sources hold; never a refusal) or 'reply' (a short
    conversational reply to small talk, without sources)."""
