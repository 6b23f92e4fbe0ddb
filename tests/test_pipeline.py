"""RagPipeline end to end with every real component over the bundled sample corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragserve.config import Settings
from ragserve.errors import EmptyQueryError
from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.pipeline import RagPipeline
from ragserve.types import Intent, Message


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path, embedder
) -> Iterator[RagPipeline]:  # type: ignore[no-untyped-def]
    from ragserve.ingest.pipeline import Ingestor

    settings = Settings(data_dir=tmp_path_factory.mktemp("pipe"))
    p = RagPipeline(settings, embedder=embedder)
    p.warm_up()
    Ingestor(settings, p.index, embedder).ingest_paths([sample_corpus], progress=False)
    yield p
    p.close()


def test_answer_is_grounded_cited_and_timed(pipeline: RagPipeline) -> None:
    a = pipeline.answer("How do I enable HTTP/2 in httpx?")
    assert not a.refused and a.text
    assert any("http2.md" in h.chunk.source for h in a.sources)
    assert a.citations and all(1 <= c.number <= len(a.sources) for c in a.citations)
    assert {"query", "retrieve", "context", "generate", "total"} <= set(a.timings)


def test_all_five_stages_with_the_real_cross_encoder(pipeline: RagPipeline) -> None:
    settings = pipeline.settings.replace(rerank=True, refusal_threshold=0.0)
    p = RagPipeline(settings, index=pipeline.index, embedder=pipeline.embedder)
    p.warm_up()
    a = p.answer("How do I enable HTTP/2 in httpx?")
    assert {"query", "retrieve", "rerank", "context", "generate", "total"} <= set(a.timings)
    # Default fusion: sources in fused (CE + retrieval RRF) order, each with its CE probability.
    fused = [h.score for h in a.sources]
    assert fused == sorted(fused, reverse=True) and len(a.sources) == settings.retrieval.top_k
    assert all(0.0 <= h.scores["rerank"] <= 1.0 for h in a.sources)
    ce_only = RagPipeline(
        settings.replace(rerank_fusion="none"),
        index=pipeline.index,
        embedder=pipeline.embedder,
    )
    ce_only.warm_up()
    scores = [
        h.scores["rerank"] for h in ce_only.answer("How do I enable HTTP/2 in httpx?").sources
    ]
    assert scores == sorted(scores, reverse=True)


def test_pdf_source_has_a_page(pipeline: RagPipeline) -> None:
    a = pipeline.answer("What does the zlib compression library do?")
    pdf = [h for h in a.sources if h.chunk.source.endswith("zlib.3.pdf")]
    assert pdf and all(h.chunk.page in (1, 2) for h in pdf)


def test_stream_yields_tokens_then_done(pipeline: RagPipeline) -> None:
    events = list(pipeline.stream("How do I use a proxy with httpx?"))
    assert events[-1].kind == "done" and events[-1].answer is not None
    assert [e.kind for e in events[:-1]] and all(e.kind == "token" for e in events[:-1])


def test_refusal_gate_skips_generation_for_unrelated_questions(pipeline: RagPipeline) -> None:
    a = pipeline.answer("What is the capital city of Mongolia and its population in 1950?")
    assert a.refused and a.text == REFUSAL_TEXT and a.refusal_reason == "low_support"
    assert "generate" not in a.timings


def test_support_gate_refuses_on_topic_sources_that_lack_the_answer(
    pipeline: RagPipeline,
) -> None:
    # On topic (httpx clients), but nothing in the corpus covers the rest of the question.
    query = "Which httpx client release added Kerberos SPNEGO ticket renewal for proxies?"
    processed = pipeline.process(query)
    hits = pipeline.search(processed)
    assert any("httpx" in h.chunk.source for h in hits)
    assert pipeline.policy.support.best(processed.text, [h.chunk.text for h in hits]) < 0.25
    gen = pipeline.settings.generation
    try:
        # The support check alone (the re-rank gate off) refuses it before generation...
        gen.refusal_threshold = 0.0
        a = pipeline.answer(query)
        assert a.refused and "generate" not in a.timings
        # ...and the same sources with the check off get through to generation.
        gen.min_support = 0.0
        assert "generate" in pipeline.answer(query).timings
        # The re-ranker's gate (on by default) refuses it on its own as well: no candidate
        # reads as answering it.
        gen.refusal_threshold = Settings().generation.refusal_threshold
        b = pipeline.answer(query)
        assert pipeline.reranker is not None and b.refused and "generate" not in b.timings
    finally:
        gen.min_support = Settings().generation.min_support
        gen.refusal_threshold = Settings().generation.refusal_threshold


def test_chitchat_and_out_of_scope(pipeline: RagPipeline) -> None:
    hello = pipeline.answer("hello")
    assert hello.intent is Intent.CHITCHAT and not hello.sources and "retrieve" not in hello.timings
    poem = pipeline.answer("write me a poem about the sea")
    assert poem.intent is Intent.OUT_OF_SCOPE and poem.refused
    assert poem.refusal_reason == "out_of_scope" and hello.refusal_reason is None


class _ScriptedGenerator:
    """Says one fixed thing whatever the sources: stands in for a model that invents or
    declines, to check what the pipeline does after generation."""

    name = "scripted"
    context_window = 4096
    quotes_sources = False
    max_in_flight = None

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def warm_up(self) -> None:
        pass

    def check_capacity(self) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, query: str, context: object, history: object) -> Iterator[str]:
        yield self.reply


def _scripted(pipeline: RagPipeline, embedder, reply: str) -> RagPipeline:  # type: ignore[no-untyped-def]
    """The test pipeline's index and embedder, with a generator that always says ``reply``."""
    return RagPipeline(
        pipeline.settings,
        index=pipeline.index,
        embedder=embedder,
        generator=_ScriptedGenerator(reply),
    )


TIMEOUT = "How do I set a timeout on an httpx client?"
RETRIES = "How do I configure retries in httpx?"


@pytest.mark.parametrize(
    ("question", "reply", "reason"),
    [
        (
            TIMEOUT,
            "Set retries with httpx.Client(retries=3) and a zebra backoff [1].",
            "unsupported",
        ),
        (TIMEOUT, "I don't know.", "model"),
        (TIMEOUT, "Pass timeout=10.0 to httpx.Client [1].", None),
        # Framing words ("you can ... when creating") do not sink an answer its source holds.
        (
            RETRIES,
            "You can pass the `retries` parameter when creating an `AsyncHTTPTransport`: "
            "`transport = httpx.AsyncHTTPTransport(retries=1)` [3].",
            None,
        ),
        # Every word is in a source (exceptions.md, retrieved first or second whatever the
        # embedding runtime), but that sentence is not about retries.
        (RETRIES, "It lists exceptions that may be raised when using it [2].", "unverified"),
        # Each identifier is in some source; the call is not (httpx has no Client(retries=)).
        (
            RETRIES,
            "Pass `retries` to the client:\n\n```python\nimport httpx\n"
            "client = httpx.Client(retries=3)\n```",
            "unsupported",
        ),
    ],
)
def test_refusal_reason_says_which_check_declined(
    pipeline: RagPipeline, embedder, question: str, reply: str, reason: str | None
) -> None:  # type: ignore[no-untyped-def]
    a = _scripted(pipeline, embedder, reply).answer(question)
    assert "generate" in a.timings, "the gate passed: the generator was called"
    assert a.refused is (reason is not None) and a.refusal_reason == reason, a.text


def test_a_closing_line_no_source_holds_is_dropped_not_the_answer(
    pipeline: RagPipeline, embedder
) -> None:  # type: ignore[no-untyped-def]
    reply = (
        "You can use the `retries` parameter when creating an `AsyncHTTPTransport` instance. "
        "For example:\n\n```python\ntransport = httpx.AsyncHTTPTransport(retries=1)\n```\n\n"
        "Retries back off exponentially with random jitter between attempts. The longest "
        "pause between attempts is capped at thirty seconds unless overridden. [3]"
    )
    a = _scripted(pipeline, embedder, reply).answer(RETRIES)
    assert not a.refused, a.refusal_reason
    assert a.text.startswith("You can use") and "jitter" not in a.text, a.text
    assert "AsyncHTTPTransport(retries=1)" in a.text
    assert {Path(c.source).name for c in a.citations} == {"async.md"}, a.citations


def test_follow_up_is_condensed(pipeline: RagPipeline) -> None:
    history = [
        Message("user", "How do I configure proxies in httpx?"),
        Message("assistant", "Use the proxy argument [1]."),
    ]
    a = pipeline.answer("and what about authentication for it?", history)
    assert a.standalone_query and "prox" in a.standalone_query.lower()


def test_result_cache_hits_and_invalidates_on_write(
    pipeline: RagPipeline, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    pq = pipeline.process("How do I set timeouts?")
    pipeline.search(pq)
    hits = pipeline.cache_hits
    pipeline.search(pq)
    assert pipeline.cache_hits == hits + 1
    from ragserve.ingest.pipeline import Ingestor

    monkeypatch.chdir(tmp_path)
    (tmp_path / "new.md").write_text("# New\n\nTimeouts in the new system are set in minutes.\n")
    Ingestor(pipeline.settings, pipeline.index, pipeline.embedder).ingest_paths(
        [tmp_path / "new.md"], progress=False
    )
    misses = pipeline.cache_misses
    pipeline.search(pq)
    assert pipeline.cache_misses == misses + 1, "a write must invalidate cached results"


def test_empty_query(pipeline: RagPipeline) -> None:
    with pytest.raises(EmptyQueryError):
        pipeline.answer("   ")


class _CountingReranker:
    """The real cross-encoder, counting the candidates it is asked to score."""

    def __init__(self, settings: Settings, *, fail: bool = False) -> None:
        from ragserve.rerank.cross_encoder import CrossEncoderReranker

        self.inner = CrossEncoderReranker.from_settings(settings)
        self.fail = fail
        self.calls: list[int] = []

    def warm_up(self) -> None:
        self.inner.warm_up()

    def rerank(self, query: str, hits: list, k: int) -> list:  # type: ignore[type-arg]
        self.calls.append(len(hits))
        if self.fail:
            raise RuntimeError("scoring broke")
        return self.inner.rerank(query, hits, k)


def test_warm_up_primes_retrieval_and_reranking_before_the_first_question(
    pipeline: RagPipeline, embedder
) -> None:  # type: ignore[no-untyped-def]
    reranker = _CountingReranker(pipeline.settings)
    p = RagPipeline(
        pipeline.settings,
        index=pipeline.index,
        embedder=embedder,
        reranker=reranker,
        generator=_ScriptedGenerator("unused"),
    )
    p.warm_up()
    # Real candidates from the index went through the cross-encoder, so its first inference
    # happened at start-up; the user-visible result cache saw nothing of it.
    assert reranker.calls == [pipeline.settings.rerank.rerank_candidates]
    assert (p.cache_hits, p.cache_misses) == (0, 0)


def test_a_priming_failure_is_logged_and_start_up_goes_on(
    pipeline: RagPipeline, embedder, caplog
) -> None:  # type: ignore[no-untyped-def]
    p = RagPipeline(
        pipeline.settings,
        index=pipeline.index,
        embedder=embedder,
        reranker=_CountingReranker(pipeline.settings, fail=True),
        generator=_ScriptedGenerator("Pass timeout=10.0 to httpx.Client [1]."),
    )
    with caplog.at_level("WARNING", logger="ragserve.pipeline"):
        p.warm_up()
    assert "priming search at start-up failed (scoring broke)" in caplog.text
    assert p.assembler is not None, "the reader still loaded"
