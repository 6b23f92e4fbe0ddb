"""Reports people would rather see than read: a table, ablation bars, per-query distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragserve.evaluation.retrieval import METRICS, StageResult

__all__ = ["ablation_table", "write_report"]


def ablation_table(results: dict[str, StageResult], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("stage")
    for m in METRICS:
        table.add_column(m, justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    for stage, r in results.items():
        s = r.summary()
        table.add_row(
            stage,
            *(f"{r.metrics[m]:.4f}" for m in METRICS),
            f"{s.get('p50_ms', 0):.1f}",
            f"{s.get('p95_ms', 0):.1f}",
        )
    return table


def write_report(results: dict[str, StageResult], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    stages = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for i, m in enumerate(METRICS):
        ax.bar(
            [x + i * width for x in range(len(stages))],
            [results[s].metrics[m] for s in stages],
            width,
            label=m,
        )
    ax.set_xticks([x + 1.5 * width for x in range(len(stages))], stages, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}: ablation")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot([list(results[s].per_query_ndcg.values()) for s in stages], tick_labels=stages)
    ax.set_ylabel("nDCG@10 per query")
    ax.set_title(f"{title}: per-query distribution")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out / "per_query.png", dpi=110)
    plt.close(fig)

    lines = [
        f"# Retrieval evaluation: {title}",
        "",
        "| stage | " + " | ".join(METRICS) + " | p50 ms | p95 ms |",
        "|---" * (len(METRICS) + 3) + "|",
    ]
    for s in stages:
        summ = results[s].summary()
        lines.append(
            f"| {s} | "
            + " | ".join(f"{results[s].metrics[m]:.4f}" for m in METRICS)
            + f" | {summ.get('p50_ms', 0):.1f} | {summ.get('p95_ms', 0):.1f} |"
        )
    lines += ["", "Per-stage latency (ms, p50 / p95):", ""]
    for s in stages:
        parts = ", ".join(
            f"{k} {v['p50']:.1f} / {v['p95']:.1f}"
            for k, v in results[s].summary()["stage_ms"].items()
        )
        lines.append(f"- {s}: {parts}")
    lines += ["", "![ablation](ablation.png)", "", "![per-query nDCG@10](per_query.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
