"""Choose ``min_answer_coverage``: the answer-verification check after generation.

A small reader given on-topic sources that lack the answer still answers, from the nearest
sentence about something else. Verification refuses an answer when the source sentence its
words come from (with one sentence either side) covers too little of the question's terms
(``SentenceSupport.answer_coverage``).

This runs the default pipeline with the check off on N questions from the SQuAD *training*
articles (the evaluation sample is never read), once with each gold paragraph indexed and
once with it removed, records each answer's coverage, and prints what every threshold would
do: refusals with the answer present and absent, containment, and how often an answer given
with the gold paragraph present is right.

    HF_HUB_OFFLINE=1 .venv/bin/python research/answer_verification.py \
        --qa ../shared/datasets/squad-v1.1-dev/qa.jsonl --limit 100 --out /tmp/verify.jsonl
    .venv/bin/python research/answer_verification.py --analyze /tmp/verify.jsonl

About 10 s a question on an idle 2-core CPU (two answers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.config import Settings
from ragserve.evaluation.answers import (
    load_questions,
    normalize_answer,
    paired_pipelines,
    subsample,
)
from ragserve.generation.citations import strip_markers
from ragserve.pipeline import RagPipeline

THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def measure(pipe: RagPipeline, q: dict[str, Any]) -> dict[str, Any]:
    answer = pipe.answer(q["question"])
    bare = strip_markers(answer.text)
    coverage = None
    if not answer.refused:
        # The same (cached) hits and the same context the reader was given.
        processed = pipe.process(q["question"])
        context = pipe.assembler.assemble(processed.text, pipe.search(processed), [])
        coverage = pipe.support.answer_coverage(processed.text, bare, context.texts)
    return {
        "answer": answer.text,
        "refusal_reason": answer.refusal_reason,
        "coverage": coverage,
        "contained": (not answer.refused)
        and any(normalize_answer(g) in normalize_answer(bare) for g in q["answers"]),
    }


def collect(qa: Path, limit: int, articles: str, out: Path, seed: int) -> None:
    from tqdm.auto import tqdm

    questions = subsample(load_questions(qa, 300, 7, articles), limit, seed)
    main, absent = paired_pipelines(Settings(min_answer_coverage=0.0), qa, questions, articles)
    with out.open("w") as fh:
        for q in tqdm(questions, desc="questions", dynamic_ncols=True):
            for condition, pipe in (("present", main), ("absent", absent)):
                row = {"id": q["id"], "condition": condition, **measure(pipe, q)}
                fh.write(json.dumps(row) + "\n")
                fh.flush()


def analyze(path: Path) -> None:
    rows = [json.loads(line) for line in path.open() if line.strip()]
    present = [r for r in rows if r["condition"] == "present"]
    absent = [r for r in rows if r["condition"] == "absent"]

    def answered(r: dict[str, Any], t: float) -> bool:
        return r["coverage"] is not None and r["coverage"] >= t

    print(f"{len(present)} questions, SQuAD training articles\n")
    print(
        "| min_answer_coverage | refused, gold present | containment | right when answered "
        "| refused, gold absent |"
    )
    print("|---|---|---|---|---|")
    for t in THRESHOLDS:
        given = [r for r in present if answered(r, t)]
        right = sum(r["contained"] for r in given)
        print(
            f"| {t:.1f} | {1 - len(given) / len(present):.2f} | {right / len(present):.2f} "
            f"| {right / max(len(given), 1):.2f} "
            f"| {np.mean([not answered(r, t) for r in absent]):.2f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--qa", type=Path, default=Path("../shared/datasets/squad-v1.1-dev/qa.jsonl"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--articles", choices=["train", "eval"], default="train")
    ap.add_argument("--seed", type=int, default=7, help="which `limit` of the 300 to draw")
    ap.add_argument("--out", type=Path, default=Path("answer_verification.jsonl"))
    ap.add_argument("--analyze", type=Path, help="only analyse an earlier run's JSONL")
    args = ap.parse_args()
    if args.analyze is None:
        collect(args.qa, args.limit, args.articles, args.out, args.seed)
    analyze(args.analyze or args.out)


if __name__ == "__main__":
    main()
