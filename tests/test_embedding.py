from __future__ import annotations

import numpy as np
import pytest

from ragserve.embedding import SentenceTransformerEmbedder
from ragserve.errors import ModelNotFoundError


def test_builtin_model_embeds_offline(embedder: SentenceTransformerEmbedder) -> None:
    v = embedder.embed(
        [
            "How do I set a timeout?",
            "Configuring request timeouts in httpx",
            "The recipe needs two eggs",
        ]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert embedder.max_tokens == 254


def test_query_cache_hits(embedder: SentenceTransformerEmbedder) -> None:
    before = embedder.cache_hits
    a = embedder.embed_query("a repeated question")
    b = embedder.embed_query("a repeated question")
    assert embedder.cache_hits == before + 1 and np.array_equal(a, b)


def test_missing_local_model_path_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        SentenceTransformerEmbedder(str(tmp_path / "no-model")).warm_up()
