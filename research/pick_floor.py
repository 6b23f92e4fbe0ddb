"""Which lower source takes the compact context's last slot, under each re-rank floor.

``CompactContextAssembler.picks`` reads retrieval's top two and, in the last slot, whichever
lower source covers the question best, among those the re-ranker gives at least a floor. This
counts, on 300 SQuAD questions per sample and without the reader, how often the gold
paragraph is among the sources read and how many last picks each floor changes against no
floor: an absolute floor (a probability) and relative ones (a share of the best lower
source's probability, the default's kind).

    HF_HUB_OFFLINE=1 .venv/bin/python research/pick_floor.py \
        --qa ../shared/datasets/squad-v1.1-dev/qa.jsonl
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ragserve.config import Settings
from ragserve.context.assembler import CompactContextAssembler
from ragserve.evaluation.answers import index_corpus, load_questions
from ragserve.pipeline import RagPipeline

# (re-rank scores of the lower sources) -> the least score a lower source needs.
Floor = Callable[[list[float]], float]

FLOORS: dict[str, Floor] = {
    "none": lambda scores: 0.0,
    "absolute 0.05": lambda scores: 0.05,
    "relative 0.05": lambda scores: 0.05 * max(scores),
    "relative 0.1": lambda scores: 0.1 * max(scores),
    "relative 0.2": lambda scores: 0.2 * max(scores),
}


def last_picks(qa: Path, articles: str) -> dict[str, list[tuple[bool, int]]]:
    """Per floor, per question: whether gold is among the sources read, and the last pick."""
    questions = load_questions(qa, 300, 7, articles)
    assembler = CompactContextAssembler(lambda text: len(text.split()))
    out: dict[str, list[tuple[bool, int]]] = {name: [] for name in FLOORS}
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in qa.parent.name)
    with RagPipeline(Settings(collection=f"eval-{name}"[:63])) as pipe:
        pipe.warm_up(generation=False)
        index_corpus(pipe, qa.parent / "corpus.jsonl", progress=True)
        for q in questions:
            hits = pipe.search(pipe.process(q["question"]))
            if len(hits) <= 3:
                continue
            anchors = assembler.anchors(q["question"], [h.chunk.text for h in hits])
            scores = {i: hits[i].scores.get("rerank", 1.0) for i in range(2, len(hits))}
            for floor_name, floor in FLOORS.items():
                least = floor(list(scores.values()))
                lower = [i for i, s in scores.items() if s >= least] or [2]
                last = min(lower, key=lambda i: (-round(anchors[i][1], 6), i))
                gold = any(hits[i].chunk.doc_id == q["context_id"] for i in (0, 1, last))
                out[floor_name].append((gold, last))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--qa", type=Path, required=True)
    args = ap.parse_args()
    print(f"{'sample':<8} {'floor':<15} {'gold read':>9} {'picks changed':>13}")
    for articles in ("train", "eval"):
        picks = last_picks(args.qa, articles)
        base = picks["none"]
        for name, rows in picks.items():
            read = sum(gold for gold, _ in rows) / len(rows)
            changed = sum(a[1] != b[1] for a, b in zip(rows, base, strict=True))
            print(f"{articles:<8} {name:<15} {read:>9.3f} {changed:>13}")


if __name__ == "__main__":
    main()
