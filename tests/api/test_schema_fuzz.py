"""Schemathesis against our own OpenAPI schema: no input may produce a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from ragserve.config import Settings  # noqa: E402
from ragserve.serving.api.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path, embedder):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores.local import LocalIndex

    data_dir = tmp_path_factory.mktemp("fuzz")
    s = Settings(data_dir=data_dir, admin_api_key="fuzz-key", rate_limit_per_minute=100_000)
    index = LocalIndex.from_settings(s)
    index.open(embedder.fingerprint, embedder.dimension)
    Ingestor(s, index, embedder).ingest_paths(
        [sample_corpus / "httpx" / "timeouts.md"], progress=False
    )
    index.close()
    application = create_app(s)
    with TestClient(application):  # runs the lifespan: models load once
        yield schemathesis.openapi.from_asgi("/openapi.json", application)


def test_no_server_errors(app) -> None:  # type: ignore[no-untyped-def]
    """Every operation of the schema, a bounded number of generated cases each."""
    from hypothesis import given

    checked = 0
    for result in app.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(headers={"Authorization": "Bearer fuzz-key"})
            assert response.status_code < 500, (
                f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            )

        run()
        checked += 1
    assert checked >= 8, "the schema lost operations"
