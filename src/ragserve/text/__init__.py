"""Text primitives every stage shares: sentence splitting and lexical support (IDF-weighted
term coverage with a stemmer per thread). No models, no I/O."""
