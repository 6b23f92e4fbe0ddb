"""Pure logic of the re-ranker training script: how training groups draw candidates per rank band.

The script itself needs the ``train`` extras and an hour of CPU; these parts decide what the
model is trained on, so a change to them must not go unnoticed.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # pure logic: no model, no server (make test-fast)

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "train_reranker.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_reranker", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_reranker"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["train_reranker"]


def test_per_band_counts_reads_one_count_or_one_per_band(train) -> None:
    assert train.per_band_counts("2") == (2,)
    assert train.per_band_counts("1,2,6") == (1, 2, 6)
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        train.per_band_counts("1,-2,6")


def band_of(c: int) -> int:
    return 0 if c < 10 else 1 if c < 30 else 2


STRATA = [(0, 10), (10, 30), (30, 100)]


def test_sample_strata_draws_each_bands_own_count(train) -> None:
    bm25 = list(range(100))
    dense = list(range(100, 200))  # a second list: each band pools both lists' ranks
    picked = train.sample_strata(
        [bm25, dense], STRATA, (1, 2, 6), lambda c: c % 7 != 0, random.Random(0)
    )
    assert len(picked) == len(set(picked))
    assert all(c % 7 != 0 for c in picked)
    assert [band_of(c % 100) for c in picked] == [0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert any(c >= 100 for c in picked) and any(c < 100 for c in picked)


def test_sample_strata_one_count_serves_every_band(train) -> None:
    ranked = list(range(100))
    picked = train.sample_strata([ranked], STRATA, (2,), lambda c: True, random.Random(1))
    assert [band_of(c) for c in picked] == [0, 0, 1, 1, 2, 2]


def test_sample_strata_rejects_a_count_per_band_mismatch(train) -> None:
    with pytest.raises(ValueError, match="2 counts for 3 rank bands"):
        train.sample_strata([list(range(100))], STRATA, (1, 2), lambda c: True, random.Random(0))


def test_sample_strata_takes_what_a_short_band_has(train) -> None:
    ranked = list(range(40))  # band 30-100 holds only 10 candidates
    picked = train.sample_strata([ranked], STRATA, (0, 0, 25), lambda c: True, random.Random(2))
    assert sorted(picked) == list(range(30, 40))


class _FakeMiner:
    """Two fixed first-stage lists over five paragraphs, as ``Miner.ranked`` returns them."""

    ids = ("gold", "about", "holds-answer", "other", "far")
    texts = (
        "Tesla was born in 1856 in Smiljan.",
        "Tesla worked for Edison in New York.",
        "Born in 1856, Tesla later moved to Graz.",
        "Marconi sent radio signals across the Atlantic.",
        "Prime numbers have two divisors.",
    )

    def ranked(self, queries: list[str], k: int) -> tuple[list[list[int]], list[list[int]]]:
        return [[1, 2, 0, 3, 4][:k]] * len(queries), [[2, 1, 3, 0, 4][:k]] * len(queries)


def test_answer_groups_put_the_gold_paragraph_against_top_ranked_non_answers(train) -> None:
    qa = [{"question": "When was Tesla born?", "answers": ["1856"], "context_id": "gold"}]
    rows = train.answer_groups(_FakeMiner(), qa, 3, 5, random.Random(0))
    assert len(rows) == 1
    query, docs, labels = rows[0]
    assert query == "When was Tesla born?" and labels == [1.0, 0.0, 0.0, 0.0]
    assert docs[0] == _FakeMiner.texts[0]
    # The on-topic paragraph ranked first is a negative; the one that also holds "1856" is not
    # (an unlabelled answer, not a wrong one).
    assert sorted(docs[1:]) == sorted(_FakeMiner.texts[i] for i in (1, 3, 4))


def test_answer_groups_skip_a_question_whose_gold_paragraph_is_not_indexed(train) -> None:
    qa = [{"question": "When was Tesla born?", "answers": ["1856"], "context_id": "missing"}]
    assert train.answer_groups(_FakeMiner(), qa, 2, 5, random.Random(0)) == []
