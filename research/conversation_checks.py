"""The checks after generation, replayed on the drafts a conversations eval recorded.

``ragserve eval conversations --report DIR`` keeps, for each answer the checks refused after
generation, what the reader wrote (``draft``) and the sources as it read them (``context``).
This replays ``grounding.verified_stream`` (the pipeline's own checks, as the pipeline runs
them) on those drafts under variants of what the checks read as "the question", and prints
per label how many refusals each variant would turn into answers, and which. No model is
loaded: seconds, not the eval's half hour. A variant that accepts unanswerable turns' drafts
accepts invented answers; that column is the price.

    .venv/bin/python research/conversation_checks.py \
        --report docs/eval/conversations/pronouns \
        --tasks ../shared/datasets/mtrag-un-dev/tasks.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ragserve.config import Settings
from ragserve.context.assembler import AssembledContext
from ragserve.evaluation.conversations import ConversationTask, load_tasks
from ragserve.grounding.policy import AnswerPolicy
from ragserve.grounding.verified_stream import VerifiedStream
from ragserve.types import Chunk, Hit

# A variant: (the task, its recorded row) -> (question, turn, resolved turn) as the checks
# read them.
Variant = Callable[[ConversationTask, dict[str, object]], tuple[str, str, str | None]]


def _resolved(row: dict[str, object]) -> str:
    """The standalone query without the subject words the condenser appends in brackets."""
    return re.sub(r" \([^()]*\)$", "", str(row["standalone_query"]))


def _users(task: ConversationTask, n: int) -> str:
    return " ".join([t.text for t in task.turns[:-1] if t.speaker == "user"][-n:])


def _agents(task: ConversationTask, n: int) -> str:
    return " ".join([t.text for t in task.turns[:-1] if t.speaker != "user"][-n:])


VARIANTS: dict[str, Variant] = {
    "standalone, turn": lambda t, r: (str(r["standalone_query"]), t.query, None),
    "as served (standalone, turn, resolved turn)": lambda t, r: (
        str(r["standalone_query"]),
        t.query,
        _resolved(r),
    ),
    "+ the last 2 user turns": lambda t, r: (
        f"{r['standalone_query']} {_users(t, 2)}",
        t.query,
        None,
    ),
    "+ every user turn": lambda t, r: (f"{r['standalone_query']} {_users(t, 99)}", t.query, None),
    "+ user turns and the last answer": lambda t, r: (
        f"{r['standalone_query']} {_users(t, 99)} {_agents(t, 1)}",
        t.query,
        None,
    ),
}


def _context(texts: list[str]) -> AssembledContext:
    hits = [
        Hit(Chunk(f"c{i}", f"d{i}", f"source-{i}", text, 0, 0, len(text), ""), 1.0)
        for i, text in enumerate(texts)
    ]
    return AssembledContext(sources=hits, text="", tokens=0, texts=texts)


def replay(
    policy: AnswerPolicy,
    draft: str,
    texts: list[str],
    question: str,
    turn: str,
    resolved: str | None = None,
) -> str:
    stream = VerifiedStream(policy, question, _context(texts), turn=turn, resolved=resolved)
    stream.feed(draft)
    verdict, _ = stream.finish()
    return "accepted" if verdict.accepted else str(verdict.reason)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--tasks", type=Path, required=True)
    args = ap.parse_args()
    tasks = {t.task_id: t for t in load_tasks(args.tasks)}
    rows = [json.loads(line) for line in (args.report / "tasks.jsonl").read_text().splitlines()]
    drafted = [r for r in rows if r.get("draft") is not None]
    print(f"{len(drafted)} drafts refused after generation, of {len(rows)} tasks\n")
    policy = AnswerPolicy(Settings())
    print("| variant | " + " | ".join(f"{lb} accepted" for lb in _labels(drafted)) + " |")
    print("|---|" + "---|" * len(_labels(drafted)))
    for name, variant in VARIANTS.items():
        accepted: Counter[str] = Counter()
        for r in drafted:
            task = tasks[r["task_id"]]
            question, turn, resolved = variant(task, r)
            if replay(policy, r["draft"], r["context"], question, turn, resolved) == "accepted":
                accepted[r["label"]] += 1
        cells = [f"{accepted[lb]} / {n}" for lb, n in _labels(drafted).items()]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _labels(rows: list[dict[str, object]]) -> dict[str, int]:
    return dict(sorted(Counter(str(r["label"]) for r in rows).items()))


if __name__ == "__main__":
    main()
