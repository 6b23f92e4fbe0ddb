"""Which signal tells "the sources hold the answer" from "they are on topic but do not"?

The reader issue's refusal target (refuse >= 0.85 of questions whose gold paragraph was
removed, while refusing <= 0.05 of those whose gold paragraph is there) needs a signal that
separates the two almost perfectly. This measures every candidate the issue names, on the same
questions, with the default pipeline (retrieval, compact context, the local Qwen reader):

* ``support``: the lexical gate's score (the best source sentence's share of the question's
  IDF-weighted terms); ``dense``: the best dense cosine.
* the reader's own confidence: ``min_logprob`` / ``mean_logprob`` of its greedy answer tokens
  (before the citation), ``no_idk`` (minus the log-probability that it opens with "I", as in
  "I don't know").
* ``self_check``: after answering, the model is asked whether the sources state that answer for
  this exact question; log P(Yes). The system turn, sources and answer are in the KV cache, so
  this costs ~0.5 s.
* ``reorder_agree``: token F1 between the answer and a second answer written from the same
  sources in reverse order (a second generation, ~4 s).
* ``answer_coverage``: the share of the question's terms found in the source sentence that
  holds the answer's words and its neighbours (answer verification).

Each question is run with the gold paragraph in the index and with it removed (the eval's
"absent" collection); gates are off so every question reaches the reader. Prints each signal's
ROC AUC, over all questions and over those the lexical gate lets through, then a logistic
regression on all of them (5-fold CV, grouped by question) at fixed refusal-when-present rates.
Training articles by default: the evaluation sample is not read.

    HF_HUB_OFFLINE=1 .venv/bin/python research/answerability_signals.py \
        --qa ../shared/datasets/squad-v1.1-dev/qa.jsonl --limit 120 --out /tmp/signals.jsonl
    .venv/bin/python research/answerability_signals.py --analyze /tmp/signals.jsonl

About 10 s a question on an idle 2-core CPU (three generations per condition).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from calibrate_answerability import roc_auc as _auc_arrays  # research/ is on sys.path

from ragserve.config import Settings
from ragserve.context.assembler import AssembledContext, source_block
from ragserve.evaluation.answers import (
    load_questions,
    normalize_answer,
    paired_pipelines,
    squad_f1,
    subsample,
)
from ragserve.generation.prompts import build_messages
from ragserve.pipeline import RagPipeline

SIGNALS = (
    "support",
    "dense",
    "min_logprob",
    "mean_logprob",
    "no_idk",
    "self_check",
    "reorder_agree",
    "answer_coverage",
)
SELF_CHECK = (
    "Check the answer you gave: do the sources state it as the answer to this exact question? "
    "Reply Yes or No."
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'_-]*")
_MARKER = re.compile(r"\s*\[(?:Source )?\d+\]\.?")


class Reader:
    """The pipeline's llama.cpp model, greedy, recording each step's log-probabilities."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.steps: list[np.ndarray] = []
        first = lambda w: llm.tokenize(w, add_bos=False, special=False)[0]  # noqa: E731
        self.i_token = first(b"I")
        self.yes = [first(w) for w in (b"Yes", b"yes", b" Yes")]

    def _record(self, _ids: Any, logits: np.ndarray) -> np.ndarray:
        top = float(logits.max())
        self.steps.append(logits - (top + np.log(np.exp(logits - top).sum())))
        return logits

    def answer(self, messages: list[dict[str, str]], max_tokens: int = 96) -> tuple[str, dict]:
        self.steps = []
        out = self.llm.create_chat_completion(
            messages=messages,
            temperature=0.0,
            max_tokens=max_tokens,
            logits_processor=[self._record],
        )
        text = out["choices"][0]["message"]["content"].strip()
        chosen = [
            (self.llm.detokenize([int(s.argmax())]).decode(errors="replace"), float(s.max()))
            for s in self.steps
        ]
        answer_lp = []
        for piece, lp in chosen:
            if "[" in piece:  # the citation is not the answer
                break
            answer_lp.append(lp)
        first = self.steps[0] if self.steps else None
        return text, {
            "min_logprob": min(answer_lp, default=0.0),
            "mean_logprob": float(np.mean(answer_lp)) if answer_lp else 0.0,
            "no_idk": -float(first[self.i_token]) if first is not None else 0.0,
        }

    def p_yes(self, messages: list[dict[str, str]]) -> float:
        self.answer(messages, max_tokens=1)
        step = self.steps[0]
        return float(np.logaddexp.reduce(step[self.yes]))


def reversed_context(ctx: AssembledContext) -> AssembledContext:
    """The same numbered sources, written in the opposite order."""
    blocks = [
        source_block(hit, n, text)
        for n, (hit, text) in enumerate(zip(ctx.sources, ctx.texts, strict=True), 1)
    ]
    return dataclasses.replace(ctx, text="\n\n".join(reversed(blocks)))


def measure(pipe: RagPipeline, reader: Reader, q: dict[str, Any]) -> dict[str, Any]:
    processed = pipe.process(q["question"])
    hits = pipe.search(processed)
    ctx = pipe.assembler.assemble(processed.text, hits, [])
    messages = build_messages(q["question"], ctx, [])
    text, confidence = reader.answer(messages)
    bare = _MARKER.sub("", text).strip()
    check = [
        *messages,
        {"role": "assistant", "content": text},
        {"role": "user", "content": SELF_CHECK},
    ]
    self_check = reader.p_yes(check)
    again, _ = reader.answer(build_messages(q["question"], reversed_context(ctx), []))
    return {
        "support": pipe.support.best(processed.text, [h.chunk.text for h in hits[:3]]),
        "dense": max((h.scores.get("dense", 0.0) for h in hits), default=0.0),
        **confidence,
        "self_check": self_check,
        "reorder_agree": squad_f1(_MARKER.sub("", again).strip(), bare),
        "answer_coverage": pipe.support.answer_coverage(processed.text, bare, ctx.texts),
        "answer": text,
        "contained": any(normalize_answer(g) in normalize_answer(bare) for g in q["answers"]),
        "gold_first": bool(hits) and hits[0].chunk.doc_id == q["context_id"],
    }


def collect(qa: Path, limit: int, articles: str, out: Path) -> None:
    from tqdm.auto import tqdm

    settings = Settings(min_support=0.0, dense_refusal_threshold=0.0)
    questions = subsample(load_questions(qa, 300, 7, articles), limit, 7)
    main, absent = paired_pipelines(settings, qa, questions, articles)
    # A measurement probe reaches past the generator's streaming API to the model's logits.
    reader = Reader(main.generator.llm)  # type: ignore[attr-defined]
    with out.open("w") as fh:
        for q in tqdm(questions, desc="questions", dynamic_ncols=True):
            for condition, pipe in (("present", main), ("absent", absent)):
                row = {"id": q["id"], "condition": condition, **measure(pipe, reader, q)}
                fh.write(json.dumps(row) + "\n")
                fh.flush()


def _auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    if not positive or not negative:
        return float("nan")
    return _auc_arrays(np.asarray(positive, dtype=float), np.asarray(negative, dtype=float))


def analyze(path: Path, gate: float) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [json.loads(line) for line in path.open() if line.strip()]
    present = [r for r in rows if r["condition"] == "present"]
    absent = [r for r in rows if r["condition"] == "absent"]
    passed: Callable[[dict], bool] = lambda r: r["support"] >= gate  # noqa: E731
    print(
        f"{len(present)} questions; containment with no gate {np.mean([r['contained'] for r in present]):.3f}"
    )
    print(
        f"lexical gate {gate}: refuses {np.mean([not passed(r) for r in absent]):.3f} absent, "
        f"{np.mean([not passed(r) for r in present]):.3f} present\n"
    )
    print("| signal | ROC AUC, all | AUC among questions the gate lets through |")
    print("|---|---|---|")
    for s in SIGNALS:
        through = _auc([r[s] for r in present if passed(r)], [r[s] for r in absent if passed(r)])
        print(
            f"| {s} | {_auc([r[s] for r in present], [r[s] for r in absent]):.3f} | {through:.3f} |"
        )
    x = np.array([[r[s] for s in SIGNALS] for r in rows])
    y = np.array([r["condition"] == "present" for r in rows])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    p = cross_val_predict(
        model, x, y, cv=GroupKFold(5), groups=[r["id"] for r in rows], method="predict_proba"
    )[:, 1]
    print(
        f"\nall signals combined (logistic regression, 5-fold CV by question): AUC {_auc(list(p[y]), list(p[~y])):.3f}"
    )
    ordered = np.sort(p[y])
    for rate in (0.05, 0.10, 0.15, 0.20):
        t = ordered[int(rate * len(ordered))]
        print(
            f"  refusing {np.mean(p[y] < t):.3f} present -> refuses {np.mean(p[~y] < t):.3f} absent"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--qa", type=Path, default=Path("../shared/datasets/squad-v1.1-dev/qa.jsonl"))
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--articles", choices=["train", "eval"], default="train")
    ap.add_argument("--out", type=Path, default=Path("answerability_signals.jsonl"))
    ap.add_argument("--analyze", type=Path, help="only analyse an earlier run's JSONL")
    ap.add_argument("--gate", type=float, default=Settings().generation.min_support)
    args = ap.parse_args()
    if args.analyze is None:
        collect(args.qa, args.limit, args.articles, args.out)
    analyze(args.analyze or args.out, args.gate)


if __name__ == "__main__":
    main()
