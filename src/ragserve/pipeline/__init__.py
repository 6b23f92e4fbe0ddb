"""The pipeline: the stages wired in order (``rag.RagPipeline``), with the small components
that serve every stage: the search cache, stage timing and the context assembler's choice."""

from ragserve.pipeline.rag import (
    CHITCHAT_REPLY,
    CONVERSATION_REPLY,
    OUT_OF_SCOPE_REPLY,
    RagPipeline,
    StreamEvent,
)

__all__ = [
    "CHITCHAT_REPLY",
    "CONVERSATION_REPLY",
    "OUT_OF_SCOPE_REPLY",
    "RagPipeline",
    "StreamEvent",
]
