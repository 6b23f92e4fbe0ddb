"""When to ask "Do you mean X or Y?": how often each re-rank floor for a reading asks back.

A reading is a distinct document among the best sources; ``grounding.clarify`` asks back when
a turn leaves a reference unresolved and the sources hold two readings or more. Counted as a
reading only when the re-ranker gives its best source at least the floor, it asks back:

* on SQuAD's held-out sample (single questions, each with its gold paragraph in the index):
  every ask there is a question the reader would have answered;
* on MTRAG-UN dev, per label: asks on underspecified turns are wanted, the others are not.

Retrieval and re-ranking only (no reader): a few minutes.

    HF_HUB_OFFLINE=1 .venv/bin/python research/clarify_floor.py \\
        --qa ../shared/datasets/squad-v1.1-dev/qa.jsonl \\
        --tasks ../shared/datasets/mtrag-un-dev/tasks.jsonl
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ragserve.config import Settings
from ragserve.evaluation.answers import index_corpus, load_questions
from ragserve.evaluation.conversations import load_tasks
from ragserve.grounding.clarify import clarifying_question
from ragserve.pipeline import RagPipeline
from ragserve.types import Hit, Message

FLOORS = (0.0, 0.1, 0.3, 0.5, 0.7)


def asks(turn: str, history: Sequence[Message], hits: list[Hit]) -> dict[float, bool]:
    return {f: clarifying_question(turn, history, hits, min_rerank=f) is not None for f in FLOORS}


def searched(corpus: Path, items: list[tuple[str, str, list[Message]]]) -> list[dict[str, object]]:
    """(group, turn, history) -> the asks at every floor, over a throwaway index of corpus."""
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="ragserve-clarify-")))
    rows = []
    with RagPipeline(settings) as pipe:
        pipe.warm_up(generation=False)
        index_corpus(pipe, corpus, True)
        for group, turn, history in items:
            hits = pipe.search(pipe.process(turn, history))
            rows.append({"group": group, **asks(turn, history, hits)})
    return rows


def table(rows: list[dict[str, object]]) -> None:
    groups = sorted({str(r["group"]) for r in rows})
    print("| floor | " + " | ".join(groups) + " |\n|---|" + "---|" * len(groups))
    n = Counter(str(r["group"]) for r in rows)
    for floor in FLOORS:
        cells = [sum(bool(r[floor]) for r in rows if r["group"] == g) / n[g] for g in groups]
        print(f"| {floor} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qa", type=Path, required=True)
    ap.add_argument("--tasks", type=Path, required=True)
    args = ap.parse_args()
    squad = [("squad single", q["question"], []) for q in load_questions(args.qa, 300, 7)]
    rows = searched(args.qa.parent / "corpus.jsonl", squad)  # type: ignore[arg-type]
    tasks = [(f"mtrag {t.label}", t.query, t.history) for t in load_tasks(args.tasks)]
    rows += searched(args.tasks.with_name("corpus.jsonl"), tasks)  # type: ignore[arg-type]
    table(rows)


if __name__ == "__main__":
    main()
