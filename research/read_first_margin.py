"""Which source the local reader reads first: how often it is the gold SQuAD paragraph.

The compact context reads retrieval's top two and, in the last slot, whichever lower source
covers the question best (``CompactContextAssembler.picks``). The small reader copies most
from the source it reads first, so this measures, without running the reader, how often the
gold paragraph is that source under each ordering rule:

- retrieval's order (the top source first);
- all chosen sources by coverage;
- the last pick first when it covers the question more than K times as well as the top two
  (the default is K = 2.0, ``context.assembler``'s read-first margin).

Retrieval only (no LLM): about a minute for 300 questions. ``--articles train`` is the tuning
sample (SQuAD training articles); ``eval`` is the fixed held-out sample the answers eval reads.

    HF_HUB_OFFLINE=1 .venv/bin/python research/read_first_margin.py \
        --qa ../shared/datasets/squad-v1.1-dev/qa.jsonl --articles train
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ragserve.config import Settings
from ragserve.context.assembler import CompactContextAssembler
from ragserve.evaluation.answers import index_corpus, load_questions
from ragserve.pipeline import RagPipeline

Rule = Callable[[list[float]], int]


def collect(qa: Path, articles: str) -> list[tuple[list[bool], list[float]]]:
    """Per question: which chosen source is gold, and each one's coverage, in retrieval order."""
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in qa.parent.name)
    questions = load_questions(qa, 300, 7, articles)
    # _choose needs no tokenizer; only the windows it is not asked for do.
    assembler = CompactContextAssembler(lambda text: len(text.split()))
    rows = []
    with RagPipeline(Settings(collection=f"eval-{name}"[:63])) as pipe:
        pipe.warm_up(generation=False)
        index_corpus(pipe, qa.parent / "corpus.jsonl", progress=True)
        for q in questions:
            processed = pipe.process(q["question"])
            hits = pipe.search(processed)
            # The picks before the default's reordering, so every rule starts from them.
            keep, anchors = assembler.picks(processed.text, hits)
            gold = [hits[i].chunk.doc_id == q["context_id"] for i in keep]
            rows.append((gold, [coverage for _, coverage in anchors]))
    return rows


def rules(margins: list[float]) -> dict[str, Rule]:
    out: dict[str, Rule] = {
        "retrieval order": lambda c: 0,
        "coverage order": lambda c: max(range(len(c)), key=lambda i: (c[i], -i)),
    }
    for k in margins:
        out[f"last first if > {k:g}x"] = lambda c, k=k: (
            len(c) - 1 if len(c) == 3 and c[-1] > k * max(c[:-1]) else 0
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--qa", type=Path, required=True)
    ap.add_argument("--articles", choices=("train", "eval"), default="train")
    ap.add_argument("--margins", default="1,1.25,1.5,2,3")
    args = ap.parse_args()
    rows = collect(args.qa, args.articles)
    read = sum(any(g) for g, _ in rows) / len(rows)
    print(
        f"{args.articles} articles, {len(rows)} questions; gold among the sources read {read:.3f}"
    )
    print(f"{'rule':<24} {'gold read first':>15} {'moved':>6}")
    for name, rule in rules([float(m) for m in args.margins.split(",")]).items():
        first = sum(g[rule(c)] for g, c in rows) / len(rows)
        moved = sum(rule(c) != 0 for _, c in rows)
        print(f"{name:<24} {first:>15.3f} {moved:>6}")


if __name__ == "__main__":
    main()
