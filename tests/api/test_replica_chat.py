"""Scale-out on the real engine: ingest on a PostgreSQL primary, answer /chat from a streaming
read replica (``postgres_read_dsn``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pg_server import LocalPostgres

from ragserve.config import Settings
from ragserve.serving.api.app import create_app

pytestmark = pytest.mark.postgres


def test_chat_served_from_a_streaming_replica(
    sample_corpus: Path,
    embedder,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    from ragserve.ingest.pipeline import Ingestor
    from ragserve.stores.postgres import PostgresIndex

    primary = LocalPostgres().init().start()
    replica = primary.replica()
    try:
        monkeypatch.chdir(tmp_path)
        write_settings = Settings(
            data_dir=tmp_path, store="postgres", postgres_dsn=primary.dsn, collection="scaleout"
        )
        index = PostgresIndex.from_settings(write_settings)
        index.open(embedder.fingerprint, embedder.dimension)
        summary = Ingestor(write_settings, index, embedder).ingest_paths(
            [sample_corpus / "httpx"], progress=False
        )
        assert summary.count("ingested") == 10
        index.close()
        primary.wait_replayed(replica)

        serve = Settings(
            data_dir=tmp_path,
            store="postgres",
            postgres_dsn=primary.dsn,
            postgres_read_dsn=replica.dsn,
            collection="scaleout",
        )
        with TestClient(create_app(serve)) as client:
            body = client.post("/chat", json={"query": "How do I enable HTTP/2 in httpx?"}).json()
            assert any("http2.md" in s["source"] for s in body["sources"]), body
            ready = client.get("/ready").json()
            assert ready["chunks"] > 0
        # the reads really went to the replica: it is in recovery (read-only) mode
        import psycopg

        with psycopg.connect(replica.dsn) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    finally:
        replica.cleanup()
        primary.cleanup()
