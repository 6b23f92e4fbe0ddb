"""Which pre-generation gate refuses MTRAG's answerable turns, and at which floors.

For each task of a conversations file (``ragserve eval conversations``' shape) the turn is
processed and searched as ``/chat`` does (condensed, re-ranked), and the pre-generation
signals are recorded: the best cross-encoder probability, the lexical support of the best
sources and the answerability judge's best probability, for the standalone question and for
the user's own words. Printed (no reader is loaded: minutes, not the eval's half hour):

* how well each signal separates answerable+partial from unanswerable turns (ROC AUC);
* per label, the share a pair of single-question floors would refuse before the reader runs;
* the conversation gate (``AnswerPolicy._conversation_gate``: any of judge, re-ranker or
  support vouches) at its defaults, and its floors chosen by 5-fold cross-validation (on four
  folds: the least answerable refused with unanswerable refused >= 0.85; scored on the fifth),
  the estimate for conversations the floors were not chosen on.

    HF_HUB_OFFLINE=1 .venv/bin/python research/conversation_gates.py \
        --tasks ../shared/datasets/mtrag-un-dev/tasks.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
from pathlib import Path

from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from ragserve.config import Settings
from ragserve.evaluation.answers import index_corpus
from ragserve.evaluation.conversations import ConversationTask, load_tasks
from ragserve.grounding.answerability import AnswerabilityJudge
from ragserve.pipeline import RagPipeline

GROUPS = {"answerable+partial": ("answerable", "partial"), "unanswerable": ("unanswerable",)}
GROUPS["underspecified"] = ("underspecified",)


def signals(tasks_path: Path, corpus: Path, out: Path) -> list[dict[str, object]]:
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="ragserve-gates-")))
    rows = []
    judge = AnswerabilityJudge.from_settings(settings)
    with RagPipeline(settings) as pipe:
        pipe.warm_up()
        judge.warm_up()
        index_corpus(pipe, corpus, True)
        g = settings.generation
        for task in tqdm(load_tasks(tasks_path), desc="tasks", unit="task"):
            processed = pipe.process(task.query, task.history)
            hits = pipe.search(processed)
            best = [h.chunk.text for h in hits[: g.support_sources]]
            support = pipe.policy.support
            judged = [h.chunk.searchable_text for h in hits[:3]]
            rows.append(
                {
                    "task_id": task.task_id,
                    "label": task.label,
                    "history_turns": len(task.turns) - 1,
                    "standalone": processed.text,
                    "hit": any(h.chunk.doc_id in task.reference_ids for h in hits),
                    "rerank": max((h.scores.get("rerank", 0.0) for h in hits), default=0.0),
                    "support_standalone": support.best(processed.text, best),
                    "support_turn": support.best(task.query, best),
                    "support_previous": support.best(_with_previous(task), best),
                    "judge_standalone": max(judge.score(processed.text, judged), default=0.0),
                    "judge_turn": max(judge.score(task.query, judged), default=0.0),
                }
            )
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def _with_previous(task: ConversationTask) -> str:
    """The turn with the user's previous turn: the conversation reading of a follow-up."""
    users = [t.text for t in task.turns if t.speaker == "user"]
    return " ".join(users[-2:])


def hits(rows: list[dict[str, float]]) -> None:
    """A reference passage among the sources, per group with references."""
    print("| group | reference among sources |\n|---|---|")
    for name, labels in GROUPS.items():
        group = [r for r in rows if r["label"] in labels]
        if name != "unanswerable" and group:
            print(f"| {name} | {sum(bool(r['hit']) for r in group) / len(group):.3f} |")


def separation(rows: list[dict[str, float]]) -> None:
    """ROC AUC of each signal, answerable+partial (positive) against unanswerable."""
    pos = [r for r in rows if r["label"] in GROUPS["answerable+partial"]]
    neg = [r for r in rows if r["label"] == "unanswerable"]
    print("| signal | ROC AUC answerable+partial vs unanswerable |\n|---|---|")
    for name in (*SIGNALS, "support", "judge"):
        scores = [_signal(r, name) for r in pos + neg]
        auc = roc_auc_score([1] * len(pos) + [0] * len(neg), scores)
        print(f"| {name} | {auc:.3f} |")


SIGNALS = ("rerank", "support_standalone", "support_turn", "support_previous")
SIGNALS += ("judge_standalone", "judge_turn")


def _signal(row: dict[str, float], name: str) -> float:
    if name in ("support", "judge"):  # either reading, as the gates read them
        return max(row[f"{name}_standalone"], row[f"{name}_turn"])
    return row[name]


Floors = tuple[float, float, float, float]  # judge, rerank, support (each vouches), min support
DEFAULT_FLOORS: Floors = (0.2, 0.9, 0.5, 0.1)
GRID = list(
    itertools.product((0.1, 0.15, 0.2, 0.3), (0.7, 0.9, 1.01), (0.32, 0.5, 1.01), (0.0, 0.1, 0.15))
)


def _gate_refuses(row: dict[str, float], floors: Floors) -> bool:
    """As the pipeline decides: a turn without history keeps the single-question gates."""
    if not row["history_turns"]:
        return _refused(row, 0.1, 0.32, "either")
    judge, rerank, support, minimum = floors
    covered = _signal(row, "support")
    if covered < minimum:
        return True
    return not (_signal(row, "judge") >= judge or row["rerank"] >= rerank or covered >= support)


def _rates(rows: list[dict[str, float]], floors: Floors) -> list[float]:
    out = []
    for labels in GROUPS.values():
        group = [r for r in rows if r["label"] in labels]
        out.append(sum(_gate_refuses(r, floors) for r in group) / max(1, len(group)))
    return out


def conversation_gate(rows: list[dict[str, float]], folds: int = 5, seed: int = 0) -> None:
    """The conversation gate's refusals at its defaults and with cross-validated floors."""
    print("| conversation gate | " + " | ".join(GROUPS) + " |\n|---|" + "---|" * len(GROUPS))
    in_sample = _rates(rows, DEFAULT_FLOORS)
    print("| defaults " + str(DEFAULT_FLOORS) + " | " + _cells(in_sample) + " |")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    chosen, verdicts = [], []
    for k in range(folds):
        test = set(order[k::folds])
        train = [rows[i] for i in order if i not in test]
        floors = _choose(train)
        chosen.append(floors)
        verdicts += [(rows[i], _gate_refuses(rows[i], floors)) for i in sorted(test)]
    cv = []
    for labels in GROUPS.values():
        group = [refused for row, refused in verdicts if row["label"] in labels]
        cv.append(sum(group) / max(1, len(group)))
    print(f"| {folds}-fold cross-validated | " + _cells(cv) + " |")
    print("\nfloors chosen per fold (judge, rerank, support, min support):", chosen)


def _choose(rows: list[dict[str, float]]) -> Floors:
    def cost(floors: Floors) -> tuple[float, float]:
        answerable, unanswerable, _ = _rates(rows, floors)
        return (answerable if unanswerable >= 0.85 else 2.0, -unanswerable)

    return min(GRID, key=cost)


def _cells(values: list[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in values)


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
    hits(rows)  # type: ignore[arg-type]
    print()
    separation(rows)  # type: ignore[arg-type]
    print()
    table(rows)  # type: ignore[arg-type]
    print()
    conversation_gate(rows)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
