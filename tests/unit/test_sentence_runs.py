"""Sentence runs: how the re-ranker reads a candidate by default (its best run of sentences)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from ragserve.rerank.cross_encoder import MAX_RUNS, CrossEncoderReranker
from ragserve.text.sentences import sentence_windows


def _text(n: int) -> str:
    return " ".join(f"Sentence {i} is here." for i in range(n))


@pytest.mark.parametrize(
    ("n", "starts"),
    [(1, [0]), (2, [0]), (3, [0, 1]), (4, [0, 2]), (5, [0, 2, 3]), (6, [0, 2, 4])],
)
def test_sentence_windows_cover_every_sentence_in_runs_of_two(n: int, starts: list[int]) -> None:
    runs = sentence_windows(_text(n), 2)
    expected = [" ".join(f"Sentence {j} is here." for j in range(i, min(i + 2, n))) for i in starts]
    assert runs == expected


def test_a_text_without_a_sentence_boundary_is_one_run() -> None:
    assert sentence_windows("no full stop here", 2) == ["no full stop here"]
    assert sentence_windows("", 2) == [""]


class _CountingScorer:
    """A stand-in cross-encoder: the logit is how often the query's word occurs in the text."""

    form = "fake"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def logits(self, query: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        self.seen += list(texts)
        return np.array([t.lower().count(query.lower()) for t in texts], dtype=np.float32)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def _reranker(sentences: int) -> tuple[CrossEncoderReranker, _CountingScorer]:
    reranker = CrossEncoderReranker(sentences=sentences)
    scorer = _CountingScorer()
    reranker._model = scorer  # the boundary: no model load in the fast tier
    return reranker, scorer


def test_a_passage_takes_its_best_runs_score_not_its_whole() -> None:
    # "about" names Tesla once in each of six sentences; "answers" three times in one place.
    about = " ".join(f"Tesla did thing {i}." for i in range(6))
    answers = "Rain fell. Tesla met Tesla fans, said Tesla. Snow fell. Wind blew."
    whole, _ = _reranker(0)
    best_run, scorer = _reranker(2)
    assert whole.score("tesla", [about, answers]).argmax() == 0  # as one passage: 6 > 3
    assert best_run.score("tesla", [about, answers]).argmax() == 1  # best run: 3 > 2
    assert "Rain fell. Tesla met Tesla fans, said Tesla." in scorer.seen
    assert all(run.count(".") <= 2 for run in scorer.seen)


def test_runs_are_scored_in_one_batch_and_returned_in_passage_order() -> None:
    reranker, scorer = _reranker(2)
    texts = [_text(1), "X is. Y is. Tesla. Tesla tesla.", _text(3)]
    probs = reranker.score("tesla", texts)
    assert probs.shape == (3,) and int(probs.argmax()) == 1
    assert len(scorer.seen) == 1 + 2 + 2  # every run of every passage, in one call


def test_a_huge_passage_reads_a_bounded_number_of_runs() -> None:
    reranker, scorer = _reranker(2)
    reranker.score("word", ["Word. " * 16_667])
    assert len(scorer.seen) == MAX_RUNS
