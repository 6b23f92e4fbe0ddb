"""PostgreSQL specifics on a real server: migrations, bad input, crashes, a streaming replica."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import psycopg
import pytest
from pg_server import LocalPostgres

from ragserve.config import Settings
from ragserve.errors import StoreError
from ragserve.stores.base import IndexWrite
from ragserve.stores.postgres import MIGRATIONS, PostgresIndex, redact_dsn
from ragserve.types import Chunk, DocumentRecord, content_hash

pytestmark = pytest.mark.postgres
DIM = 8


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _write(doc_id: str, n: int, seed: int = 0) -> IndexWrite:
    texts = [f"{doc_id} chunk {i} about zebras and giraffes" for i in range(n)]
    chunks = [
        Chunk(
            id=Chunk.make_id(doc_id, i, content_hash(t)),
            doc_id=doc_id,
            source=doc_id,
            text=t,
            chunk_index=i,
            char_start=0,
            char_end=len(t),
            content_hash=content_hash(t),
        )
        for i, t in enumerate(texts)
    ]
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return IndexWrite(DocumentRecord(doc_id, doc_id, content_hash(f"{doc_id}{n}"), n), chunks, v)


def _count(dsn: str, sql: str, params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(sql, params).fetchone()[0])  # type: ignore[index]


def test_migrations_are_versioned_and_idempotent(pg_primary_dsn: str) -> None:
    idx = PostgresIndex(pg_primary_dsn, _name("mig"))
    idx.open("m", DIM)
    assert idx.migrate() == []  # already applied by open
    assert idx.migrate() == []
    idx.open("m", DIM)  # opening again creates nothing twice
    rows = _count(pg_primary_dsn, "SELECT count(*) FROM ragserve_schema_migrations")
    assert rows == len(MIGRATIONS)
    idx.close()


def test_concurrent_first_opens_do_not_race(pg_primary_dsn: str) -> None:
    name = _name("race")
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            i = PostgresIndex(pg_primary_dsn, name)
            i.open("m", DIM)
            i.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize(
    "name", ["x; DROP TABLE ragserve_collections; --", "a b", "../etc", "", "x'y", "a" * 64]
)
def test_collection_names_with_sql_are_rejected(pg_primary_dsn: str, name: str) -> None:
    with pytest.raises(StoreError, match="Invalid collection name"):
        PostgresIndex(pg_primary_dsn, name)
    with pytest.raises(ValueError):
        Settings(collection=name)
    assert (
        _count(
            pg_primary_dsn,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'ragserve_collections'",
        )
        == 1
    )


def test_hostile_text_is_data_not_sql(pg_primary_dsn: str) -> None:
    idx = PostgresIndex(pg_primary_dsn, _name("inj"))
    idx.open("m", DIM)
    w = _write("d'; DROP TABLE ragserve_chunks; --", 1)
    idx.write([w])
    assert idx.document_hash(w.record.doc_id) == w.record.content_hash
    # tsquery operators and quotes in a query are searched as words, never parsed.
    for q in ["zebras & !giraffes | (", "'; DROP TABLE x; --", "\\' :* <-> !!"]:
        idx.sparse_search(q, 5)
    assert idx.sparse_search("zebras' | !", 5)[0][0] == w.chunks[0].id
    idx.close()


def test_no_dsn_wrong_dsn_and_server_down_are_clear_errors() -> None:
    with pytest.raises(StoreError, match="needs a PostgreSQL DSN"):
        PostgresIndex.from_settings(Settings(store="postgres"))
    idx = PostgresIndex("postgresql://u:hunter2@127.0.0.1:1/db", "x", connect_timeout=2)
    with pytest.raises(StoreError) as err:
        idx.open("m", DIM)
    assert "Cannot connect to the PostgreSQL primary" in err.value.message
    assert "hunter2" not in str(err.value) and "RAGSERVE_POSTGRES_DSN" in (err.value.hint or "")
    assert redact_dsn("postgresql://u:hunter2@h/db") == "postgresql://u:***@h/db"
    assert "hunter2" not in redact_dsn("host=h user=u password=hunter2 dbname=d")


def test_wrong_database_and_server_stopping_under_an_open_index() -> None:
    with LocalPostgres() as server:
        bad = PostgresIndex(server.dsn.rsplit("/", 1)[0] + "/nope", "x")
        with pytest.raises(StoreError, match="nope"):
            bad.open("m", DIM)
        idx = PostgresIndex(server.dsn, "down", connect_timeout=1)
        idx.open("m", DIM)
        idx.write([_write("a", 2)])
        server.stop()
        with pytest.raises(StoreError, match="PostgreSQL failed"):
            idx.dense_search(_write("a", 2).vectors[0], 3)
        with pytest.raises(StoreError):
            idx.write([_write("b", 2)])
        server.start()
        # The pool reconnects by itself (after its back-off), no reopen needed.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert idx.document_hash("a") is not None
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        idx.close()


def test_pgvector_not_enabled_is_named() -> None:
    with LocalPostgres() as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE novector")
            conn.execute("CREATE ROLE weak LOGIN")
        dsn = server.dsn.rsplit("/", 1)[0] + "/novector"
        # A non-superuser in a database without the extension (pgvector is not "trusted").
        weak = dsn.replace("postgres@", "weak@")
        with pytest.raises(StoreError) as err:
            PostgresIndex(weak, "x").open("m", DIM)
        assert "pgvector" in err.value.message and "'weak'" in err.value.message
        assert "CREATE EXTENSION vector" in (err.value.hint or "")


def test_kill_server_mid_ingest_then_rerun_completes() -> None:
    with LocalPostgres() as server:
        writes = [_write(f"doc{i:03d}", 50, seed=i) for i in range(80)]
        idx = PostgresIndex(server.dsn, "crash", connect_timeout=1)
        idx.open("m", DIM)
        started = threading.Event()
        failure: list[BaseException] = []

        def ingest() -> None:
            try:
                for n, w in enumerate(writes):
                    idx.write([w])
                    if n == 5:
                        started.set()
            except StoreError as exc:
                failure.append(exc)
            finally:
                started.set()

        t = threading.Thread(target=ingest)
        t.start()
        started.wait(30)
        server.kill()  # SIGKILL postmaster and backends mid-transaction
        t.join(60)
        assert failure, "the ingest should have failed when the server died"
        idx.close()

        server.start()
        idx = PostgresIndex(server.dsn, "crash")
        idx.open("m", DIM)
        assert idx.check() == [], "a half-written document survived the crash"
        done = {d.doc_id for d in idx.documents()}
        assert 0 < len(done) < len(writes)
        assert idx.info().chunks == 50 * len(done)
        # The rerun: ingestion skips what is there (same hash) and completes the rest.
        redo = [w for w in writes if idx.document_hash(w.record.doc_id) != w.record.content_hash]
        assert len(redo) == len(writes) - len(done)
        idx.write(redo)
        info = idx.info()
        assert (info.documents, info.chunks) == (len(writes), 50 * len(writes))
        assert idx.check() == []
        idx.close()


def test_streaming_replica_serves_reads(
    pg_primary_dsn: str, pg_replica_dsn: str, pg_wait_replayed: Callable[[], None]
) -> None:
    name = _name("rep")
    writer = PostgresIndex(pg_primary_dsn, name)
    writer.open("m", DIM)
    w = _write("alpha", 3, seed=7)
    writer.write([w])
    pg_wait_replayed()
    settings = Settings(
        store="postgres",
        collection=name,
        postgres_dsn=pg_primary_dsn,  # type: ignore[arg-type]
        postgres_read_dsn=pg_replica_dsn,  # type: ignore[arg-type]
    )
    reader = PostgresIndex.from_settings(settings)
    reader.open("m", DIM)
    assert reader.info().documents == 1
    assert reader.sparse_search("zebras", 5)
    assert reader.dense_search(w.vectors[1], 1)[0][0] == w.chunks[1].id
    # The query really ran on the standby.
    with reader._conn(read=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True  # type: ignore[index]
    # A later write shows up on the replica once replayed.
    writer.write([_write("beta", 2, seed=8)])
    pg_wait_replayed()
    assert reader.info().documents == 2
    writer.close()
    reader.close()


def test_sparse_ranking_weights_rare_words(pg_primary_dsn: str) -> None:
    """BM25-like: a rare query word outweighs common ones; long questions still match (OR)."""
    idx = PostgresIndex(pg_primary_dsn, _name("bm25"))
    idx.open("m", DIM)
    common = [f"patients in the study showed results number {i}" for i in range(30)]
    rare = "thrombocytopenia was observed in one study"
    texts = [*common, rare]
    chunks = [
        Chunk(
            id=f"c{i}",
            doc_id="d",
            source="d",
            text=t,
            chunk_index=i,
            char_start=0,
            char_end=len(t),
            content_hash=content_hash(t),
        )
        for i, t in enumerate(texts)
    ]
    vecs = np.tile(np.eye(DIM, dtype=np.float32)[0], (len(texts), 1))
    idx.write([IndexWrite(DocumentRecord("d", "d", "h", len(texts)), chunks, vecs)])
    hits = idx.sparse_search("What results did patients in the study show for thrombocytopenia?", 5)
    assert hits[0][0] == f"c{len(common)}"
    assert len(hits) == 5 and all(s > 0 for _, s in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    idx.close()
