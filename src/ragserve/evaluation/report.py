"""Reports people would rather see than read: a table, quality against latency, per-query
distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragserve.evaluation.retrieval import METRICS, StageResult

__all__ = ["ablation_table", "quality_latency_chart", "write_report"]


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


def quality_latency_chart(results: dict[str, StageResult], out: Path, title: str) -> Path:
    """nDCG@10 against p50 latency, one labelled point per stage: what each stage buys for what
    it costs. Latency spans 4 ms to seconds, hence the log axis; the quality axis spans only the
    stages' own range so that a difference of 0.01 is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MultipleLocator

    points = [
        (stage, max(r.summary().get("p50_ms", 0.0), 0.1), r.metrics["ndcg@10"])
        for stage, r in results.items()
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for _, ms, ndcg in points:
        ax.scatter([ms], [ndcg], s=40, zorder=3)
    for (stage, ms, ndcg), offset in zip(points, _label_offsets(points), strict=True):
        ax.annotate(stage, (ms, ndcg), xytext=offset, textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    xs = [ms for _, ms, _ in points]
    ax.set_xlim(min(xs) / 2, max(xs) * 4)  # room on the right for the last label
    ys = [y for _, _, y in points]
    low, high = min(ys), max(ys)
    pad = max(0.01, (high - low) * 0.15)
    ax.set_ylim(low - pad, high + pad)
    # Gridlines every 0.01 while they stay readable, so a 0.01 difference can be read off.
    step = 0.01 if high - low <= 0.15 else 0.05
    ax.yaxis.set_major_locator(MultipleLocator(step))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_locator(MultipleLocator(0.01))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("p50 latency per query, ms (log scale)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{title}: quality against latency")
    fig.tight_layout()
    path = out / "quality_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_offsets(points: list[tuple[str, float, float]]) -> list[tuple[int, int]]:
    """Label offsets in points: each label goes right of its dot, stepping down below a label
    already placed next to a close neighbour (stages with near-equal cost and quality)."""
    import math

    placed: list[tuple[float, float, int]] = []
    offsets: dict[int, tuple[int, int]] = {}
    span = (max(p[2] for p in points) - min(p[2] for p in points)) or 1.0
    # Highest first, so that of two close dots the upper one keeps the upper label.
    for i in sorted(range(len(points)), key=lambda i: -points[i][2]):
        _, ms, y = points[i]
        dy = 4
        for x0, y0, d0 in placed:
            if abs(math.log10(ms) - x0) < 0.3 and abs(y - y0) < span * 0.05 and dy >= d0 - 10:
                dy = d0 - 11
        placed.append((math.log10(ms), y, dy))
        offsets[i] = (6, dy)
    return [offsets[i] for i in range(len(points))]


def write_report(results: dict[str, StageResult], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    stages = list(results)
    quality_latency_chart(results, out, title)

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
    lines += [
        "",
        "![nDCG@10 against p50 latency](quality_latency.png)",
        "",
        "![per-query nDCG@10](per_query.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
