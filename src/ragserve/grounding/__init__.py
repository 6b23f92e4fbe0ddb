"""The answer policy: every gate, check and threshold between retrieved text and what the
user reads (retrieval confidence, lexical support, grounding, answer verification,
clarifying questions, showing code). ``docs/answer-policy.md`` is its decision table."""
