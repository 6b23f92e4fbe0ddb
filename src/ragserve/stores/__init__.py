"""Index backends: the vector store, the sparse index and the manifest, kept as one unit.

Backends register a factory here by name (``settings.index.store``). The registry lives in the
package, not in ``base.py``, so importing the protocol never imports a backend: the embedded
store pulls in Chroma and PostgreSQL pulls in psycopg, and neither should load for the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ragserve.stores.base import DocumentIndex, IndexInfo, IndexWrite

if TYPE_CHECKING:
    from ragserve.config import Settings

__all__ = [
    "BackendFactory",
    "DocumentIndex",
    "IndexInfo",
    "IndexWrite",
    "backends",
    "open_index",
    "register_backend",
]

BackendFactory = Callable[["Settings"], DocumentIndex]

_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``settings.index.store == name`` open an index through ``factory`` (last one wins)."""
    _BACKENDS[name] = factory


def backends() -> list[str]:
    return sorted(_BACKENDS)


def open_index(settings: Settings) -> DocumentIndex:
    """The backend named by ``settings.index.store`` (not yet opened)."""
    try:
        factory = _BACKENDS[settings.index.store]
    except KeyError:
        raise ValueError(
            f"unknown index backend '{settings.index.store}' (known: {', '.join(backends())})"
        ) from None
    return factory(settings)


def _chroma(settings: Settings) -> DocumentIndex:
    # Imported on first use: the backend module is only loaded when it is chosen.
    from ragserve.stores.local import LocalIndex

    return LocalIndex.from_settings(settings)


def _postgres(settings: Settings) -> DocumentIndex:
    from ragserve.stores.postgres import PostgresIndex

    return PostgresIndex.from_settings(settings)


register_backend("chroma", _chroma)
register_backend("postgres", _postgres)
