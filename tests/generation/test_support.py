"""SentenceSupport: the lexical support score shared by the extractive answerer and the gate."""

from __future__ import annotations

import pytest

from ragserve.text.support import SentenceSupport

pytestmark = pytest.mark.fast  # pure logic: no model, no server (make test-fast)

SOURCES = [
    "The Normans were the people who gave their name to Normandy, a region in France. "
    "They descended from Norse raiders and settlers.",
    "Rollo, the Viking leader, agreed to a treaty with King Charles III of West Francia in 911. "
    "The Normans adopted the Frankish language within a few generations.",
]


@pytest.fixture(scope="module")
def support() -> SentenceSupport:
    s = SentenceSupport()
    s.warm_up()
    return s


def test_sentence_holding_the_answer_ranks_first_with_high_support(
    support: SentenceSupport,
) -> None:
    ranked = support.rank("In what year did Rollo agree to the treaty?", SOURCES)
    assert ranked[0].source == 2 and "911" in ranked[0].text
    assert ranked[0].matched >= {"rollo", "treati", "agre"}
    assert (
        support.best("In what year did Rollo agree to the treaty?", SOURCES) > 0.5
    )  # all but "year"


def test_on_topic_sources_without_the_answer_score_low(support: SentenceSupport) -> None:
    # Same article, but nothing about Sicily or its kings: only the topic word matches.
    assert support.best("Who was the first Norman king of Sicily?", SOURCES) < 0.25


def test_nothing_usable_scores_zero(support: SentenceSupport) -> None:
    assert support.best("", SOURCES) == 0.0
    assert support.best("the of and", SOURCES) == 0.0
    assert support.best("Rollo treaty", ["## Heading", "too short"]) == 0.0


def test_answer_coverage_is_high_when_the_answers_sentence_is_about_the_question(
    support: SentenceSupport,
) -> None:
    question = "In what year did Rollo agree to the treaty?"
    assert support.answer_coverage(question, "911", SOURCES) >= 0.75


def test_answer_coverage_is_low_for_an_answer_taken_from_a_sentence_about_something_else(
    support: SentenceSupport,
) -> None:
    # On-topic sources, no answer: a small model answers from the nearest sentence anyway.
    question = "When did the Normans conquer Sicily?"
    assert support.answer_coverage(question, "In 911 [2]", SOURCES) < 0.5
    assert support.answer_coverage(question, "", SOURCES) == 0.0
    assert support.answer_coverage("the of and", "Rollo", SOURCES) == 0.0


def test_a_code_identifier_supports_the_words_it_is_made_of() -> None:
    # "What exception ..." is answered by a sentence that names `TimeoutException`: the
    # identifier's parts are words a user asks in (and `file_size` is "size of a file").
    support = SentenceSupport()
    sentence = ["The default behavior is to raise a `TimeoutException` after 5 seconds."]
    assert support.best("Which exception is raised after a timeout?", sentence) > 0.9
    assert (
        support.best("How do I get the size of a file?", ["Call file_size(p) on it."]) > 0.5
    )  # not "get"
    # An apostrophe is not a boundary: "don't" stays one word.
    assert "t" not in support.terms("don't")
