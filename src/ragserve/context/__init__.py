"""Stage 4, context assembly: which source text (and history) the reader sees, within a
token budget. ``assemble(query, hits, history) -> AssembledContext``."""
