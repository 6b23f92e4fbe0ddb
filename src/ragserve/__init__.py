"""ragserve: grounded, cited answers over your documents.

The stable public surface is what ``__all__`` lists; everything else is internal and may move.
Heavy modules (models, stores) load lazily, so ``import ragserve`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragserve.config import Settings
from ragserve.errors import RagServeError
from ragserve.types import Answer, Chunk, Citation, Document, Hit

if TYPE_CHECKING:
    from ragserve.pipeline import RagPipeline

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Chunk",
    "Citation",
    "Document",
    "Hit",
    "RagPipeline",
    "RagServeError",
    "Settings",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "RagPipeline":
        from ragserve.pipeline import RagPipeline

        return RagPipeline
    raise AttributeError(f"module 'ragserve' has no attribute {name!r}")
