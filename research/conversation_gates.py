"""Which pre-generation gate refuses MTRAG's answerable turns, and at which floors.

For each task of a conversations file (``ragserve eval conversations``' shape) the turn is
processed and searched as ``/chat`` does (condensed, re-ranked), and the two pre-generation
signals are recorded: the best cross-encoder probability and the lexical support of the best
sources, for the standalone question and for the user's own words. The table shows, per label,
the share a pair of floors would refuse before the reader runs (no reader is loaded: minutes,
not the eval's half hour).

    HF_HUB_OFFLINE=1 .venv/bin/python research/conversation_gates.py \
        --tasks ../shared/datasets/mtrag-un-dev/tasks.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from ragserve.config import Settings
from ragserve.evaluation.answers import index_corpus
from ragserve.evaluation.conversations import load_tasks
from ragserve.pipeline import RagPipeline

GROUPS = {"answerable+partial": ("answerable", "partial"), "unanswerable": ("unanswerable",)}
GROUPS["underspecified"] = ("underspecified",)


def signals(tasks_path: Path, corpus: Path, out: Path) -> list[dict[str, object]]:
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="ragserve-gates-")))
    rows = []
    with RagPipeline(settings) as pipe:
        pipe.warm_up()
        index_corpus(pipe, corpus, True)
        g = settings.generation
        for task in tqdm(load_tasks(tasks_path), desc="tasks", unit="task"):
            processed = pipe.process(task.query, task.history)
            hits = pipe.search(processed)
            best = [h.chunk.text for h in hits[: g.support_sources]]
            rows.append(
                {
                    "label": task.label,
                    "rerank": max((h.scores.get("rerank", 0.0) for h in hits), default=0.0),
                    "support_standalone": pipe.policy.support.best(processed.text, best),
                    "support_turn": pipe.policy.support.best(task.query, best),
                }
            )
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def table(rows: list[dict[str, float]]) -> None:
    print("| rerank floor | support floor | reading | " + " | ".join(GROUPS) + " |")
    print("|---|---|---|" + "---|" * len(GROUPS))
    for floor in (0.0, 0.01, 0.03, 0.05, 0.1):
        for support in (0.0, 0.2, 0.32):
            for reading in ("standalone", "either"):
                cells = []
                for labels in GROUPS.values():
                    group = [r for r in rows if r["label"] in labels]
                    refused = [_refused(r, floor, support, reading) for r in group]
                    cells.append(f"{sum(refused) / max(1, len(group)):.2f}")
                print(f"| {floor} | {support} | {reading} | " + " | ".join(cells) + " |")


def _refused(row: dict[str, float], floor: float, support: float, reading: str) -> bool:
    covered = row["support_standalone"]
    if reading == "either":
        covered = max(covered, row["support_turn"])
    return row["rerank"] < floor or covered < support


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=Path, required=True)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/conversation_gates.jsonl"))
    ap.add_argument("--reuse", action="store_true", help="Read --out instead of searching.")
    args = ap.parse_args()
    corpus = args.corpus or args.tasks.with_name("corpus.jsonl")
    if args.reuse:
        rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    else:
        rows = signals(args.tasks, corpus, args.out)
    table(rows)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
