"""Chunking: a Document -> Chunks small enough to embed, each an exact span of the document.

Four strategies from the seed, all counting tokens with the embedder's own tokenizer:

* ``fixed``: windows of N tokens with K overlap;
* ``recursive`` (default): paragraphs, then lines, then sentences, then words, merged up to N
  tokens with ~10% overlap (LangChain's recursive splitter, but token-exact and span-preserving);
* ``sentence``: whole sentences packed up to N tokens, never cut inside a sentence;
* ``semantic``: sentences embedded, split where adjacent similarity drops below a percentile.

The size is clamped to what the embedder reads: all-MiniLM-L6-v2 stops at 256 tokens, and a
512-token chunk would have its second half silently never embedded.

The document is tokenised once; token counts of any span come from a binary search over token
offsets, so chunking SciFact's 5,183 abstracts takes seconds.
"""

from __future__ import annotations

import bisect
import copy
import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Sentence splitting lives beside the stages that read sentences; chunking is one of them.
from ragserve.text.sentences import CODE_FENCES, Span, split_sentences, strip_span
from ragserve.types import Chunk, Document, content_hash

__all__ = [
    "CODE_FENCES",
    "Chunker",
    "FixedTokenChunker",
    "RecursiveChunker",
    "SemanticChunker",
    "SentenceChunker",
    "TokenCounter",
    "build_chunker",
    "split_sentences",
]

log = logging.getLogger("ragserve.ingest")


class TokenCounter:
    """Token offsets of one text from a Hugging Face fast tokenizer, for O(log n) span counts.

    Every thread encodes with a tokenizer of its own, loaded from the same files as the one
    given. A fast tokenizer is one Rust object behind a borrow check: the embedder re-enables
    truncation and padding on it for every batch, and an upload thread encoding through it at
    the same moment fails with ``RuntimeError: Already borrowed``. The given tokenizer itself is
    never used to encode, so sharing it with the embedder is safe.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._load = _tokenizer_loader(tokenizer)
        self._local = threading.local()

    def _own(self) -> Any:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = self._load()
        return tokenizer

    def offsets(self, text: str) -> list[Span]:
        enc = self._own()(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return [(a, b) for a, b in enc["offset_mapping"] if b > a]

    def count(self, text: str) -> int:
        return len(self.offsets(text))


_THREAD_TOKENIZERS = threading.local()


def _tokenizer_loader(tokenizer: Any) -> Callable[[], Any]:
    """How to make another tokenizer like ``tokenizer``: from its files (a directory, or the
    one it was loaded from), else by copying a private prototype that nothing encodes with."""
    source = (
        tokenizer if isinstance(tokenizer, str | Path) else getattr(tokenizer, "name_or_path", "")
    )
    if source and Path(source).is_dir():
        path = str(Path(source).resolve())

        def from_files() -> Any:
            # One per thread and directory, whatever the number of counters: loading costs
            # tens of milliseconds, and counters only ever call it one way (no truncation).
            loaded = _THREAD_TOKENIZERS.__dict__.setdefault("by_path", {})
            if path not in loaded:
                from transformers import AutoTokenizer

                loaded[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
            return loaded[path]

        return from_files
    prototype = copy.deepcopy(tokenizer)
    lock = threading.Lock()

    def from_prototype() -> Any:
        with lock:  # copying reads the prototype; keep copies from overlapping
            return copy.deepcopy(prototype)

    return from_prototype


class _Tokens:
    def __init__(self, offsets: list[Span]) -> None:
        self.offsets = offsets
        self.starts = [a for a, _ in offsets]
        self.ends = [b for _, b in offsets]

    def count(self, a: int, b: int) -> int:
        """Tokens that start inside [a, b)."""
        return bisect.bisect_left(self.starts, b) - bisect.bisect_left(self.starts, a)

    def index_at(self, offset: int) -> int:
        return bisect.bisect_left(self.starts, offset)


@runtime_checkable
class Chunker(Protocol):
    def split(self, document: Document) -> list[Chunk]: ...


class _Base:
    def __init__(
        self, tokenizer: Any, size: int, overlap: int, max_tokens: int | None = None
    ) -> None:
        self.counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
        self.size = size
        self.overlap = min(overlap, size // 2)
        self.max_tokens = max_tokens

    def split(self, document: Document) -> list[Chunk]:
        text = document.text
        tokens = _Tokens(self.counter.offsets(text))
        worker = self
        if self.max_tokens and document.title:
            # The title is embedded with every chunk (Chunk.searchable_text); leave room for it
            # so the chunk's own tail is not truncated away. A copy with the smaller size, not
            # a change to this chunker, which other threads may be splitting with.
            room = self.max_tokens - self.counter.count(document.title) - 1
            worker = copy.copy(self)
            worker.size = max(16, min(self.size, room))
        return _make_chunks(document, worker._spans(text, tokens))

    def _spans(self, text: str, tokens: _Tokens) -> list[Span]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _windows(self, text: str, tokens: _Tokens, a: int, b: int, overlap: int) -> list[Span]:
        """Fixed token windows inside [a, b); the fallback for text with no usable boundary.

        Windows start and end on word boundaries where possible: a window starting inside a
        word would re-tokenise differently and could exceed the limit.
        """
        first, last = tokens.index_at(a), tokens.index_at(b)
        out: list[Span] = []
        step = max(1, self.size - overlap)
        i = first
        while i < last:
            j = min(i + self.size, last)
            while j < last and j - 1 > i and not _word_start(text, tokens.offsets[j][0]):
                j -= 1  # do not end a window inside a word
            span = strip_span(text, tokens.offsets[i][0], tokens.offsets[j - 1][1])
            while j - 1 > i and self.counter.count(text[span[0] : span[1]]) > self.size:
                j -= 1
                span = strip_span(text, tokens.offsets[i][0], tokens.offsets[j - 1][1])
            if span[1] > span[0]:
                out.append(span)
            if j >= last:
                break
            nxt = max(i + 1, j - overlap) if j - i <= self.size else i + step
            while nxt < j and not _word_start(text, tokens.offsets[nxt][0]):
                nxt += 1
            i = nxt if nxt > i else i + 1
        return out


def _word_start(text: str, offset: int) -> bool:
    return offset == 0 or not (text[offset - 1].isalnum() and text[offset].isalnum())


class FixedTokenChunker(_Base):
    """Every ``size`` tokens, with ``overlap`` tokens repeated; boundary-unaware by design."""

    def _spans(self, text: str, tokens: _Tokens) -> list[Span]:
        return self._windows(text, tokens, 0, len(text), self.overlap)


class RecursiveChunker(_Base):
    """Split on the coarsest boundary that yields pieces under ``size``, then merge pieces."""

    _LEVELS: Sequence[str] = ("paragraph", "line", "sentence", "word")

    def _spans(self, text: str, tokens: _Tokens) -> list[Span]:
        return self._split(text, tokens, 0, len(text), 0)

    def _pieces(self, text: str, a: int, b: int, level: str) -> list[Span]:
        if level == "sentence":
            return split_sentences(text, a, b)
        pattern = {"paragraph": r"\n[ \t]*\n", "line": r"\n", "word": r"\s+"}[level]
        out, cursor = [], a
        for m in re.compile(pattern).finditer(text, a, b):
            out.append((cursor, m.start()))
            cursor = m.end()
        out.append((cursor, b))
        return [s for s in (strip_span(text, x, y) for x, y in out) if s[1] > s[0]]

    def _split(self, text: str, tokens: _Tokens, a: int, b: int, level: int) -> list[Span]:
        if tokens.count(a, b) <= self.size:
            s = strip_span(text, a, b)
            return [s] if s[1] > s[0] else []
        if level >= len(self._LEVELS):
            return self._windows(text, tokens, a, b, self.overlap)
        pieces: list[Span] = []
        for p in self._pieces(text, a, b, self._LEVELS[level]):
            if tokens.count(*p) > self.size:
                pieces.extend(self._split(text, tokens, p[0], p[1], level + 1))
            else:
                pieces.append(p)
        return self._merge(tokens, pieces)

    def _merge(self, tokens: _Tokens, pieces: list[Span]) -> list[Span]:
        out: list[Span] = []
        window: list[Span] = []
        for piece in pieces:
            if window and tokens.count(window[0][0], piece[1]) > self.size:
                out.append((window[0][0], window[-1][1]))
                # keep a tail of whole pieces as overlap, within budget
                while window and (
                    tokens.count(window[0][0], window[-1][1]) > self.overlap
                    or tokens.count(window[0][0], piece[1]) > self.size
                ):
                    window.pop(0)
            window.append(piece)
        if window:
            out.append((window[0][0], window[-1][1]))
        return out


class SentenceChunker(_Base):
    """Whole sentences packed up to ``size``; ``overlap_sentences`` repeated between chunks."""

    def __init__(
        self, tokenizer: Any, size: int, overlap_sentences: int = 1, max_tokens: int | None = None
    ) -> None:
        super().__init__(tokenizer, size, 0, max_tokens)
        self.overlap_sentences = overlap_sentences

    def _spans(self, text: str, tokens: _Tokens) -> list[Span]:
        return self._pack(text, tokens, split_sentences(text))

    def _pack(self, text: str, tokens: _Tokens, sentences: list[Span]) -> list[Span]:
        out: list[Span] = []
        window: list[Span] = []
        for sent in sentences:
            if tokens.count(*sent) > self.size:
                # A single sentence over the limit: the only case where a cut inside a
                # sentence is unavoidable; cut at words.
                if window:
                    out.append((window[0][0], window[-1][1]))
                    window = []
                out.extend(
                    RecursiveChunker(self.counter, self.size, 0)._split(
                        text, tokens, sent[0], sent[1], 3
                    )
                )
                continue
            if window and tokens.count(window[0][0], sent[1]) > self.size:
                out.append((window[0][0], window[-1][1]))
                keep = window[-self.overlap_sentences :] if self.overlap_sentences else []
                while keep and tokens.count(keep[0][0], sent[1]) > self.size:
                    keep.pop(0)
                window = keep
            window.append(sent)
        if window:
            out.append((window[0][0], window[-1][1]))
        return out


class SemanticChunker(SentenceChunker):
    """Break where adjacent sentences are least similar (distance above a percentile)."""

    def __init__(
        self,
        tokenizer: Any,
        embed: Callable[[list[str]], np.ndarray],
        size: int,
        percentile: float = 90.0,
        threshold: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(tokenizer, size, overlap_sentences=0, max_tokens=max_tokens)
        self.embed = embed
        self.percentile = percentile
        self.threshold = threshold

    def _spans(self, text: str, tokens: _Tokens) -> list[Span]:
        sentences = split_sentences(text)
        if len(sentences) < 3:
            return self._pack(text, tokens, sentences)
        vectors = np.asarray(self.embed([text[a:b] for a, b in sentences]), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
        # Compare the two sentences before each gap with the two after it: single short
        # sentences are too noisy to compare one to one.
        n = len(sentences)
        distance = np.empty(n - 1, dtype=np.float32)
        for i in range(n - 1):
            left = vectors[max(0, i - 1) : i + 1].mean(axis=0)
            right = vectors[i + 1 : min(n, i + 3)].mean(axis=0)
            cos = float(left @ right / (np.linalg.norm(left) * np.linalg.norm(right) + 1e-12))
            distance[i] = 1.0 - cos
        cut = (
            self.threshold
            if self.threshold is not None
            else float(np.percentile(distance, self.percentile))
        )
        groups: list[list[Span]] = [[sentences[0]]]
        for i, sent in enumerate(sentences[1:]):
            if distance[i] > cut:
                groups.append([])
            groups[-1].append(sent)
        out: list[Span] = []
        for group in groups:
            out.extend(self._pack(text, tokens, group))
        return out


def _make_chunks(document: Document, spans: list[Span]) -> list[Chunk]:
    chunks: list[Chunk] = []
    for a, b in spans:
        text = document.text[a:b]
        if not text.strip():
            continue
        seg = document.segment_at(a)
        h = content_hash(text)
        idx = len(chunks)
        chunks.append(
            Chunk(
                id=Chunk.make_id(document.doc_id, idx, h),
                doc_id=document.doc_id,
                source=document.source,
                text=text,
                chunk_index=idx,
                char_start=a,
                char_end=b,
                content_hash=h,
                page=seg.page if seg else None,
                section=seg.section if seg else None,
                title=document.title,
            )
        )
    return chunks


def build_chunker(
    name: str,
    tokenizer: Any,
    *,
    size: int,
    overlap: int,
    max_tokens: int,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    percentile: float = 90.0,
) -> Chunker:
    if size > max_tokens:
        log.warning(
            "chunk size %d tokens clamped to %d: the embedding model reads at most %d tokens, "
            "and text past that would never be embedded",
            size,
            max_tokens,
            max_tokens,
        )
        overlap = round(overlap * max_tokens / size)
        size = max_tokens
    overlap = min(overlap, size // 2)
    if name == "fixed":
        return FixedTokenChunker(tokenizer, size, overlap, max_tokens)
    if name == "recursive":
        return RecursiveChunker(tokenizer, size, overlap, max_tokens)
    if name == "sentence":
        return SentenceChunker(tokenizer, size, overlap_sentences=1, max_tokens=max_tokens)
    if name == "semantic":
        if embed is None:
            raise ValueError("the semantic chunker needs an embed function")
        return SemanticChunker(tokenizer, embed, size, percentile=percentile, max_tokens=max_tokens)
    raise ValueError(f"unknown chunker '{name}' (recursive, fixed, sentence, semantic)")
