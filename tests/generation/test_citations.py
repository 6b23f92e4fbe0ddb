from __future__ import annotations

import pytest

from ragserve.context import ContextAssembler
from ragserve.generation.citations import (
    REFUSAL_TEXT,
    attribute,
    is_refusal,
    validate_citations,
)
from ragserve.types import Chunk, Hit

pytestmark = pytest.mark.fast  # pure logic: no model, no server (make test-fast)


def _ctx():  # type: ignore[no-untyped-def]
    texts = [
        "Timeouts default to five seconds. They can be disabled with None.",
        "HTTP/2 is enabled with http2=True. It needs the h2 package.",
    ]
    hits = [
        Hit(
            Chunk(
                id=f"c{i}",
                doc_id="d",
                source=f"s{i}.md",
                text=t,
                chunk_index=i,
                char_start=0,
                char_end=len(t),
                content_hash="h",
                page=i + 1,
            ),
            1.0,
        )
        for i, t in enumerate(texts)
    ]
    return ContextAssembler(lambda s: len(s.split())).assemble("q", hits)


def test_valid_citations_get_metadata_and_supporting_span() -> None:
    _text, cites, invalid = validate_citations(
        "The default timeout is five seconds [1]. Use http2=True [2].", _ctx()
    )
    assert invalid == [] and [c.number for c in cites] == [1, 2]
    assert cites[0].source == "s0.md" and cites[0].page == 1
    assert cites[0].span == "Timeouts default to five seconds."
    assert cites[1].span == "HTTP/2 is enabled with http2=True."


def test_invented_source_numbers_are_dropped_and_reported() -> None:
    text, cites, invalid = validate_citations("Five seconds [1][7]. Also [3, 2].", _ctx())
    assert invalid == [3, 7]
    assert "[7]" not in text and "[3" not in text and "[1]" in text and "[2]" in text
    assert {c.number for c in cites} == {1, 2}


def test_source_n_style_markers_are_normalised() -> None:
    text, cites, _ = validate_citations("Five seconds [Source 1].", _ctx())
    assert text == "Five seconds [1]." and cites[0].number == 1


def test_refusal_detection() -> None:
    assert is_refusal(REFUSAL_TEXT)
    assert is_refusal("The provided sources do not contain information about llamas.")
    assert is_refusal("I don't know.")
    assert not is_refusal("Timeouts default to five seconds [1].")


def test_an_uncited_answer_is_credited_to_the_source_that_contains_it() -> None:
    texts = ["Paris is the capital of France.", "The Eiffel Tower is 330 metres tall."]
    assert attribute("330 metres", texts) == 2
    assert attribute("the capital of France", texts) == 1


def test_an_answer_no_source_supports_gets_no_citation() -> None:
    texts = ["Paris is the capital of France."]
    assert attribute("Berlin, in 1961", texts) is None
    assert attribute("", texts) is None


def test_words_repeated_from_the_question_do_not_count_as_support() -> None:
    texts = ["Manning, 39, became the oldest quarterback to play in a Super Bowl."]
    question = "How old was Peyton Manning when he played in Super Bowl 50?"
    assert attribute("He was 39 years old when he played in Super Bowl 50.", texts) is None
    assert attribute("He was 39 years old", texts, question=question) is None
    assert attribute("39", texts, question=question) == 1
    assert attribute("Peyton Manning played in Super Bowl 50", texts, question=question) is None


def test_ground_keeps_a_citation_whose_source_holds_the_answer() -> None:
    from ragserve.generation.citations import ground

    texts = ["Timeouts default to five seconds.", "HTTP/2 needs the h2 package."]
    assert ground("five seconds [1]", texts, [1], question="What is the default timeout?") == [1]


def test_ground_moves_a_wrong_citation_to_the_source_that_holds_the_words() -> None:
    from ragserve.generation.citations import ground

    texts = ["Timeouts default to five seconds.", "HTTP/2 needs the h2 package."]
    assert ground("the h2 package [1]", texts, [1], question="What does HTTP/2 need?") == [2]


def test_ground_rejects_a_fact_no_source_states() -> None:
    from ragserve.generation.citations import ground

    texts = ["The Louvre is a museum in Paris.", "It holds the Mona Lisa."]
    assert (
        ground("It was founded in 1762. [2]", texts, [2], question="When was the Louvre founded?")
        is None
    )


def test_ground_does_not_count_function_words_as_unsupported() -> None:
    from ragserve.generation.citations import ground

    texts = ["For instance: transport = httpx.AsyncHTTPTransport(retries=1) for AsyncClient."]
    question = "How do I configure retries in httpx?"
    framed = "You can set it when you create it: `httpx.AsyncHTTPTransport(retries=1)` [1]."
    assert ground(framed, texts, [1], question=question) == [1]
    assert (
        ground("You can set it with a backoff factor of 3 [1].", texts, [1], question=question)
        is None
    )
