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
