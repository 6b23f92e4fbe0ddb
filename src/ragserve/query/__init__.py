"""Stage 1, query processing: condense a follow-up with the conversation, classify intent,
expand. ``QueryProcessor.process(query, history) -> ProcessedQuery``."""
