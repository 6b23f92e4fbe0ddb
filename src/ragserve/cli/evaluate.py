"""``ragserve eval retrieval``, ``ragserve eval answers`` and ``ragserve eval conversations``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ragserve.cli.support import configure_cli_logging, friendly_errors
from ragserve.config import load_settings

__all__ = ["app"]

app = typer.Typer(help="Measure retrieval and answer quality.", no_args_is_help=True)


@app.command()
@friendly_errors
def retrieval(
    dataset: Annotated[
        Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/.")
    ],
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    stages: Annotated[
        str | None,
        typer.Option(
            help="'default' (bm25, dense and the configured pipeline: minutes), 'all' (the whole "
            "ablation, with re-ranking: much longer) or comma-separated stages: bm25, dense, "
            "hybrid-rrf, hybrid-convex (each fusion alone), hybrid (the pipeline's: configured "
            "fusion + dense feedback), hybrid+expansion, hybrid+rerank, hybrid+expansion+rerank."
        ),
    ] = None,
    collection: Annotated[
        str | None, typer.Option(help="Collection to (re)use; default eval-<name>.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N queries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write report.md and plots here.")] = None,
) -> None:
    """nDCG@10, Recall@10/100, MRR@10 and latency on a BEIR dataset, with an ablation."""
    from rich.console import Console

    from ragserve.evaluation.beir import load_beir
    from ragserve.evaluation.report import ablation_table, write_report
    from ragserve.evaluation.retrieval import (
        configured_stage,
        estimate_seconds,
        evaluate_retrieval,
        select_stages,
    )

    configure_cli_logging(False)
    load_settings()  # invalid settings stop the run before the dataset is read
    data = load_beir(dataset, split)
    settings = load_settings(collection=collection or f"eval-{data.name}"[:63])
    chosen = select_stages(stages, settings)
    n_queries = min(len(data.qrels), limit or len(data.qrels))
    ingest_s, query_s = estimate_seconds(
        chosen, settings, documents=data.corpus_size, queries=n_queries
    )
    typer.echo(
        f"evaluating {', '.join(chosen)} on {n_queries} queries: about {_duration(query_s)}"
        f" (+ about {_duration(ingest_s)} to index {data.corpus_size} documents the first"
        " time); --stages all runs the whole ablation",
        err=True,
    )
    # Progress bars go to stderr, so --json keeps stdout one JSON object and still shows them.
    results = evaluate_retrieval(settings, data, stages=chosen, limit=limit, progress=True)
    configured = configured_stage(settings)
    full = configured if configured in results else chosen[-1]
    head = results[full].summary()
    body = {k: head[k] for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10")}
    body |= {
        "p50_ms": head.get("p50_ms"),
        "p95_ms": head.get("p95_ms"),
        "queries": len(results[full].per_query_ndcg),
        "pipeline": full,
        "dataset": data.name,
        "split": split,
        "stage_ms": head["stage_ms"],
        "ablation": {s: r.summary() for s, r in results.items()},
    }
    if report is not None:
        write_report(results, report, f"{data.name} ({split})")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        Console().print(ablation_table(results, f"{data.name} {split}: {body['queries']} queries"))
        if report is not None:
            typer.echo(f"report: {report / 'report.md'}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"


@app.command()
@friendly_errors
def answers(
    qa: Annotated[Path, typer.Option(help="SQuAD-style qa.jsonl (corpus.jsonl beside it).")],
    generator: Annotated[
        str | None,
        typer.Option(
            help="Reader variant: llama (local GGUF, default) | extractive | openai; "
            "--model picks the GGUF."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="GGUF for --generator llama (builtin:... or a path).")
    ] = None,
    n: Annotated[int, typer.Option(help="Questions in the fixed seeded sample.")] = 300,
    limit: Annotated[
        int | None, typer.Option(help="Use only N of the sample, drawn across it (slow backends).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write answers.json, answers.jsonl (every answer) and answers.png here."),
    ] = None,
    articles: Annotated[
        str,
        typer.Option(
            help="SQuAD only: 'eval' (the held-out articles' fixed sample) or 'train' (a sample "
            "of the training articles, for tuning without reading the evaluation sample)."
        ),
    ] = "eval",
) -> None:
    """Containment, token F1, citation accuracy, refusal with the answer absent and present,
    time to first token and to the whole answer."""
    from ragserve.evaluation.answers import evaluate_answers

    configure_cli_logging(False)
    overrides: dict[str, object] = {"generator": generator}
    if model:
        overrides["llm_model_path"] = model
    if articles not in ("eval", "train"):
        raise typer.BadParameter(f"--articles must be 'eval' or 'train', not {articles!r}.")
    result = evaluate_answers(
        load_settings(**overrides),
        qa,
        n=n,
        limit=limit,
        progress=True,  # on stderr: stdout stays the JSON
        report=report,
        articles=articles,
    )
    typer.echo(json.dumps(result, indent=2 if as_json else None))


@app.command()
@friendly_errors
def conversations(
    tasks: Annotated[
        Path, typer.Option(help="MTRAG-style tasks.jsonl: a conversation and its turn to answer.")
    ],
    corpus: Annotated[
        Path | None, typer.Option(help="BEIR corpus.jsonl; default: the one beside --tasks.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Ask only the first N tasks.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write report.md, results.json, tasks.jsonl and plots here."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Keep the rows --report's tasks.jsonl already holds (a stopped run) and ask "
            "only the remaining tasks."
        ),
    ] = False,
) -> None:
    """Each task's last user turn asked the /chat way, with the earlier turns as history:
    source hit, cited-is-reference, refused, clarify, answer quality and TTFT per label."""
    from rich.console import Console

    from ragserve.evaluation.conversations import evaluate_conversations, targets_table

    configure_cli_logging(False)
    result = evaluate_conversations(
        load_settings(),
        tasks,
        corpus,
        limit=limit,
        progress=True,  # on stderr: stdout stays the JSON
        report=report,
        resume=resume,
    )
    # Under --json the tables go to stderr, so a logged run still shows them and stdout stays
    # one JSON object.
    console = Console(stderr=as_json)
    if not console.is_terminal:
        console.width = 160  # a log or a pipe: the per-label table needs its columns
    for table in targets_table(result):
        console.print(table)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif report is not None:
        typer.echo(f"report: {report / 'report.md'}")
