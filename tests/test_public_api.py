"""Guard the public surface: what ``import ragserve`` promises must not change by accident."""

from __future__ import annotations

import pytest

import ragserve

pytestmark = pytest.mark.fast  # pure logic: no model, no server (make test-fast)

EXPECTED = {
    "Answer",
    "Chunk",
    "Citation",
    "Document",
    "Hit",
    "RagPipeline",
    "RagServeError",
    "Settings",
    "__version__",
}


def test_public_names() -> None:
    assert set(ragserve.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(ragserve, name) is not None


def test_stage_modules_declare_their_exports() -> None:
    import importlib

    for module in (
        "ragserve.config",
        "ragserve.types",
        "ragserve.errors",
        "ragserve.embedding.embedder",
        "ragserve.retrieval.hybrid",
        "ragserve.rerank.cross_encoder",
        "ragserve.runtime.cpu",
        "ragserve.grounding.answerability",
        "ragserve.query.processor",
        "ragserve.context.assembler",
        "ragserve.pipeline",
        "ragserve.stores.bm25",
        "ragserve.ingest.loaders",
        "ragserve.ingest.chunking",
        "ragserve.ingest.pipeline",
        "ragserve.generation",
        "ragserve.stores",
        "ragserve.serving.api.app",
    ):
        mod = importlib.import_module(module)
        assert hasattr(mod, "__all__"), module
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.{name}"
