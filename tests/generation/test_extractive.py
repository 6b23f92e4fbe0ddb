"""The extractive answerer on real SQuAD paragraphs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragserve.context.assembler import ContextAssembler
from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.generation.extractive import ExtractiveGenerator


def _squad(shared: Path, n: int) -> tuple[dict[str, str], list[dict]]:
    corpus = {}
    with (shared / "squad-v1.1-dev" / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            corpus[d["_id"]] = d["text"]
    qa = []
    with (shared / "squad-v1.1-dev" / "qa.jsonl").open() as fh:
        for i, line in enumerate(fh):
            if i % 97 == 0:
                qa.append(json.loads(line))
            if len(qa) >= n:
                break
    return corpus, qa


def test_answers_contain_gold_and_cite_the_gold_paragraph(shared_datasets: Path, make_hit) -> None:  # type: ignore[no-untyped-def]
    corpus, qa = _squad(shared_datasets, 30)
    gen = ExtractiveGenerator()
    gen.warm_up()
    assembler = ContextAssembler(gen.count_tokens)
    ids = list(corpus)
    contained = cited = 0
    for i, q in enumerate(qa):
        distractors = [ids[(i * 31 + 7) % len(ids)], ids[(i * 17 + 3) % len(ids)]]
        hits = [make_hit(corpus[q["context_id"]], doc_id=q["context_id"])] + [
            make_hit(corpus[d], doc_id=d) for d in distractors if d != q["context_id"]
        ]
        ctx = assembler.assemble(q["question"], hits)
        answer = "".join(gen.stream(q["question"], ctx, []))
        contained += any(a.lower() in answer.lower() for a in q["answers"])
        cited += "[1]" in answer
    assert contained / len(qa) >= 0.6
    assert cited / len(qa) >= 0.8


@pytest.mark.fast
def test_refuses_when_nothing_matches(make_hit) -> None:  # type: ignore[no-untyped-def]
    gen = ExtractiveGenerator()
    ctx = ContextAssembler(gen.count_tokens).assemble(
        "q", [make_hit("The cat sat on the mat all afternoon long.", doc_id="a")]
    )
    assert "".join(gen.stream("What is quantum chromodynamics?", ctx, [])) == REFUSAL_TEXT
