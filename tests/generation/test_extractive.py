"""The extractive answerer on real SQuAD paragraphs."""

from __future__ import annotations

import json
from pathlib import Path

from ragserve.context import ContextAssembler
from ragserve.generation.citations import REFUSAL_TEXT
from ragserve.generation.extractive import ExtractiveGenerator
from ragserve.types import Chunk, Hit


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


def _hit(doc_id: str, text: str) -> Hit:
    return Hit(
        Chunk(
            id=doc_id,
            doc_id=doc_id,
            source=doc_id,
            text=text,
            chunk_index=0,
            char_start=0,
            char_end=len(text),
            content_hash="h",
        ),
        1.0,
    )


def test_answers_contain_gold_and_cite_the_gold_paragraph(shared_datasets: Path) -> None:
    corpus, qa = _squad(shared_datasets, 30)
    gen = ExtractiveGenerator()
    gen.warm_up()
    assembler = ContextAssembler(gen.count_tokens)
    ids = list(corpus)
    contained = cited = 0
    for i, q in enumerate(qa):
        distractors = [ids[(i * 31 + 7) % len(ids)], ids[(i * 17 + 3) % len(ids)]]
        hits = [_hit(q["context_id"], corpus[q["context_id"]])] + [
            _hit(d, corpus[d]) for d in distractors if d != q["context_id"]
        ]
        ctx = assembler.assemble(q["question"], hits)
        answer = "".join(gen.stream(q["question"], ctx, []))
        contained += any(a.lower() in answer.lower() for a in q["answers"])
        cited += "[1]" in answer
    assert contained / len(qa) >= 0.6
    assert cited / len(qa) >= 0.8


def test_refuses_when_nothing_matches() -> None:
    gen = ExtractiveGenerator()
    ctx = ContextAssembler(gen.count_tokens).assemble(
        "q", [_hit("a", "The cat sat on the mat all afternoon long.")]
    )
    assert "".join(gen.stream("What is quantum chromodynamics?", ctx, [])) == REFUSAL_TEXT
