"""How much source text the local reader should read: quality against prompt size and TTFT.

On a 2-core CPU the reader's time to first token is its prompt: Qwen2.5-Coder-1.5B reads
roughly 75 tokens a second. This sweep runs the default pipeline (retrieval, answerability
refusal gates, compact context, the local LLM) on N seeded questions from the SQuAD
*training* articles (the default is chosen here, so the held-out evaluation sample is never
read) for several compact-context budgets, and plots containment and token F1 against the
prompt's context tokens and against TTFT. The chosen default (``Settings.context_budget``) is
read off this curve. TTFT is only meaningful on an otherwise idle machine: the load average is
printed with each row.

    HF_HUB_OFFLINE=1 .venv/bin/python research/sweep_reader_context.py \
        --qa ../shared/datasets/squad-v1.1-dev/qa.jsonl --limit 40 --budgets 120,180,240,360 \
        --out docs/reader
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ragserve.config import Settings
from ragserve.context.assembler import CompactContextAssembler
from ragserve.evaluation.answers import index_corpus, load_questions, run_questions, subsample
from ragserve.pipeline import RagPipeline
from ragserve.runtime.cpu import cpu_flags


def vector_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
    return " ".join(f for f in wanted if f in cpu_flags())


def sweep(qa: Path, limit: int, budgets: list[int], articles: str) -> list[dict[str, float]]:
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in qa.parent.name)
    settings = Settings(collection=f"eval-{name}"[:63])
    questions = subsample(load_questions(qa, 300, 7, articles), limit, 7)
    rows = []
    with RagPipeline(settings) as pipe:
        pipe.warm_up()
        index_corpus(pipe, qa.parent / "corpus.jsonl", progress=True)
        assert pipe.generator is not None
        for budget in budgets:
            pipe.assembler = CompactContextAssembler(
                pipe.generator.count_tokens,
                budget=budget,
                max_sources=settings.generation.context_sources,
                context_window=pipe.generator.context_window,
            )
            out = run_questions(pipe, questions, True, f"budget {budget}")
            answered = [r for r in out if not r["refused"]]
            rows.append(
                {
                    "budget": budget,
                    "context_tokens_p50": float(np.median([r["context_tokens"] for r in answered])),
                    "containment": float(np.mean([r["contained"] for r in out])),
                    "f1": float(np.mean([r["f1"] for r in out])),
                    "ttft_p50_ms": float(np.median([r["ttft"] for r in out])),
                    "total_p50_ms": float(np.median([r["total"] for r in out])),
                    "refusal": float(np.mean([r["refused"] for r in out])),
                    "load_avg_1m": os.getloadavg()[0],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict[str, float]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x_key, label in (
        (axes[0], "context_tokens_p50", "source tokens in the prompt (p50)"),
        (axes[1], "ttft_p50_ms", "time to first token, p50 (ms)"),
    ):
        xs = [r[x_key] for r in rows]
        for metric, style in (("containment", "o-"), ("f1", "s--")):
            ax.plot(xs, [r[metric] for r in rows], style, label=metric)
        for r, x in zip(rows, xs, strict=True):
            ax.annotate(
                f"budget {r['budget']}",
                (x, r["containment"]),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, 6),
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of questions")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = out / "context_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    (out / "context_curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--qa", type=Path, default=Path("../shared/datasets/squad-v1.1-dev/qa.jsonl"))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--budgets", default="120,180,240,360")
    ap.add_argument("--out", type=Path, default=Path("docs/reader"))
    ap.add_argument("--articles", choices=("train", "eval"), default="train")
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    print(f"CPU flags: {vector_flags()}")
    rows = sweep(a.qa, a.limit, budgets, a.articles)
    title = (
        f"Reader context budget, {a.limit} SQuAD {a.articles}-article questions ({vector_flags()})"
    )
    print(plot(rows, a.out, title))


if __name__ == "__main__":
    main()
