"""Stage 1 for conversations: which standalone query finds a turn's reference passage?

Ingests the MTRAG-UN dev corpus into a throwaway index and, for every ANSWERABLE and PARTIAL
task, asks its last user turn with the earlier turns as history through the pipeline's own
``process`` + ``search`` (hybrid retrieval and the default re-ranker). Per variant of the
query stage: a reference passage among the top 5 sources (hit@5), first (hit@1), MRR@5, and
the p50 of the query stage and of the search, split by the task's ``Multi-Turn`` label.

Variants: (a) the old rule (8 words of the last user turn, follow-ups only), (b) no
condensation, (c) subject words from the whole conversation weighted by recency, role and
corpus IDF, with a pronoun replaced by the best of them (every turn / pronouns kept /
follow-ups only / without IDF / a few settings), (d) a dense query
vector mixed with the recent user turns, (e) the cost of a rewrite by the local reader
(prompt tokens for every task, a few real rewrites timed), (f) combinations. Also: how many
turns of each label the intent rule calls small talk.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/conversation_queries.py \
        [--data ../shared/datasets/mtrag-un-dev] [--rewrites 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.config import Settings
from ragserve.pipeline import RagPipeline
from ragserve.query.intent import classify_intent
from ragserve.query.processor import condense
from ragserve.query.subject import SubjectCondenser
from ragserve.query.term_weights import CorpusTermWeights
from ragserve.runtime.cpu import cpu_flags
from ragserve.types import Intent, Message, ProcessedQuery

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "mtrag-un-dev"
LABELS = ("Follow-up", "Clarification", "N/A")
REWRITE_SYSTEM = (
    "Rewrite the user's last message as one standalone search query that names its subject. "
    "Reply with the query only."
)


@dataclass(frozen=True)
class Task:
    task_id: str
    query: str
    history: tuple[Message, ...]
    refs: frozenset[str]
    label: str
    answerability: str


def load_tasks(path: Path) -> list[Task]:
    tasks = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        turns = [
            Message("user" if t["speaker"] == "user" else "assistant", t["text"])
            for t in rec["input"]
        ]
        label = rec["Multi-Turn"]
        tasks.append(
            Task(
                task_id=rec["task_id"],
                query=turns[-1].content.strip(),
                history=tuple(turns[:-1]),
                refs=frozenset(c["document_id"] for c in rec["contexts"]),
                label=label[0] if isinstance(label, list) else label,
                answerability=_one(rec["answerability"]),
            )
        )
    return tasks


def _one(value: Any) -> str:
    return value[0] if isinstance(value, list) else value


class MixingEmbedder:
    """The pipeline's embedder, with the query vector moved toward the conversation's:
    ``normalise(e(turn) + weight * e(context))`` (variant d), for the one query it is set for."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.text: str | None = None
        self.context: str | None = None
        self.weight = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def embed_query(self, text: str) -> np.ndarray:
        vector = self.base.embed_query(text)
        if text != self.text or not self.context or self.weight <= 0:
            return vector
        mixed = vector + self.weight * self.base.embed_query(self.context)
        return (mixed / np.linalg.norm(mixed)).astype(np.float32)


# A variant: (query, history) -> (the standalone text, the dense context or None).
Variant = Callable[[str, Sequence[Message]], tuple[str, str | None]]


def recent_user_turns(history: Sequence[Message], n: int) -> str:
    return " ".join([m.content for m in history if m.role == "user"][-n:])


def build_variants(weights: CorpusTermWeights) -> dict[str, Variant]:
    def subject(**kw: Any) -> Variant:
        c = SubjectCondenser(kw.pop("term_weight", weights), **kw)
        return lambda q, h: (c.condense(q, h), None)

    def mixed(base: Variant, n: int, w: float) -> Variant:
        def run(q: str, h: Sequence[Message]) -> tuple[str, str | None]:
            text, _ = base(q, h)
            return text, (recent_user_turns(h, n) or None) if w else None

        run.weight = w  # type: ignore[attr-defined]
        return run

    none: Variant = lambda q, h: (q, None)  # noqa: E731
    default = subject()
    return {
        "a: old rule (last user turn, follow-ups)": lambda q, h: (condense(q, h), None),
        "b: no condensation": none,
        "c: subject, every turn (k=4)": default,
        "c: subject, pronouns kept (no resolution)": subject(resolve_pronouns=False),
        "c: subject, follow-ups only": subject(only_follow_ups=True),
        "f: c (k=4) + d w=0.5": mixed(default, 2, 0.5),
        "d: dense mix 2 user turns w=0.5": mixed(none, 2, 0.5),
        "c: subject, no IDF (lexicon only)": subject(term_weight=None),
        "c: subject, user turns only": subject(assistant_weight=0.0),
        "c: subject, k=8": subject(max_terms=8),
    }


# (standalone text, dense context, weight) -> (doc ids, search ms): a query two variants
# share is searched once (a search with re-ranking is about a second on a busy 2-core CPU).
_SEARCHED: dict[tuple[str, str | None, float], tuple[list[str], float]] = {}


def search_docs(
    pipe: RagPipeline,
    mixer: MixingEmbedder,
    processed: ProcessedQuery,
    context: str | None,
    weight: float,
) -> tuple[list[str], float]:
    key = (processed.text, context, weight)
    if key not in _SEARCHED:
        mixer.text, mixer.context, mixer.weight = processed.text, context, weight
        _forget_searches(pipe)
        started = time.perf_counter()
        hits = pipe.search(processed)
        elapsed = (time.perf_counter() - started) * 1000
        _SEARCHED[key] = (list(dict.fromkeys(h.chunk.doc_id for h in hits))[:5], elapsed)
    return _SEARCHED[key]


def _forget_searches(pipe: RagPipeline) -> None:
    """Empty the pipeline's search cache: it would hide the cost of a repeated query."""
    if hasattr(pipe, "_cache"):
        pipe._cache.clear()
    elif hasattr(pipe, "cache"):
        pipe.cache = type(pipe.cache)()


def run_variant(
    pipe: RagPipeline, mixer: MixingEmbedder, variant: Variant, tasks: Sequence[Task]
) -> dict[str, Any]:
    rows = []
    for task in tasks:
        started = time.perf_counter()
        processed = pipe.process(task.query, task.history)
        text, context = variant(task.query, task.history)
        processed = replace(processed, text=text)
        query_ms = (time.perf_counter() - started) * 1000
        weight = getattr(variant, "weight", 0.0)
        docs, search_ms = search_docs(pipe, mixer, processed, context, weight)
        rank = next((i for i, d in enumerate(docs, 1) if d in task.refs), None)
        rows.append(
            {
                "task_id": task.task_id,
                "label": task.label,
                "standalone": text,
                "rank": rank,
                "query_ms": query_ms,
                "search_ms": search_ms,
            }
        )
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for label in ("all", *LABELS):
        sel = [r for r in rows if label == "all" or r["label"] == label]
        if not sel:
            continue
        ranks = [r["rank"] for r in sel]
        out[label] = {
            "n": len(sel),
            "hit@5": sum(r is not None for r in ranks) / len(sel),
            "hit@1": sum(r == 1 for r in ranks) / len(sel),
            "mrr@5": sum(1 / r for r in ranks if r) / len(sel),
            "query_p50_ms": statistics.median(r["query_ms"] for r in sel),
            "search_p50_ms": statistics.median(r["search_ms"] for r in sel),
        }
    return out


def markdown(results: dict[str, dict[str, Any]]) -> str:
    head = "| variant | " + " | ".join(f"{lb} hit@5" for lb in ("all", *LABELS))
    head += " | hit@1 | MRR@5 | query p50 ms | search p50 ms |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, res in results.items():
        s = res["summary"]
        cells = [f"{s[lb]['hit@5']:.3f}" if lb in s else "-" for lb in ("all", *LABELS)]
        a = s["all"]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {a['hit@1']:.3f} | {a['mrr@5']:.3f} | "
            f"{a['query_p50_ms']:.2f} | {a['search_p50_ms']:.0f} |"
        )
    n = {lb: s["n"] for lb, s in next(iter(results.values()))["summary"].items()}
    lines.append("")
    lines.append("Tasks: " + ", ".join(f"{lb} {v}" for lb, v in n.items()))
    return "\n".join(lines)


def small_talk_census(tasks: Sequence[Task]) -> dict[str, Any]:
    """Last turns the intent rule calls chit-chat, per answerability label."""
    out: dict[str, Any] = {}
    for task in tasks:
        entry = out.setdefault(task.answerability, {"n": 0, "chitchat": []})
        entry["n"] += 1
        if classify_intent(task.query) is Intent.CHITCHAT:
            entry["chitchat"].append(task.query)
    history = [
        m.content
        for t in tasks
        for m in t.history
        if m.role == "user" and classify_intent(m.content) is Intent.CHITCHAT
    ]
    out["history user turns"] = {"chitchat": sorted(set(history))}
    return out


def rewrite_cost(tasks: Sequence[Task], n: int, turns: int = 4) -> dict[str, Any]:
    """(e): prompt tokens of a rewrite over the last ``turns`` messages, for every task, and
    ``n`` real rewrites by the shipped reader, timed."""
    from ragserve.generation.llama import LlamaCppGenerator

    gen = LlamaCppGenerator(max_tokens=48)
    gen.warm_up()
    llm = gen._llm
    sizes, samples = [], []
    for i, task in enumerate(tasks):
        messages = rewrite_messages(task, turns)
        tokens = sum(gen.count_tokens(m["content"]) + 4 for m in messages)
        sizes.append(tokens)
        if i < n:
            started = time.perf_counter()
            out = llm.create_chat_completion(messages=messages, max_tokens=48, temperature=0.0)
            seconds = time.perf_counter() - started
            samples.append(
                {
                    "query": task.query,
                    "rewrite": out["choices"][0]["message"]["content"].strip(),
                    "seconds": seconds,
                    "prompt_tokens": out["usage"]["prompt_tokens"],
                }
            )
    return {
        "prompt_tokens_p50": statistics.median(sizes),
        "prompt_tokens_p95": float(np.percentile(sizes, 95)),
        "rewrite_seconds_p50": statistics.median(s["seconds"] for s in samples)
        if samples
        else None,
        "samples": samples,
    }


def rewrite_messages(task: Task, turns: int) -> list[dict[str, str]]:
    lines = [
        f"{m.role}: {m.content[:600]}" for m in task.history[-turns:]
    ]  # long answers cut, as a prompt budget would
    convo = "\n".join(lines)
    return [
        {"role": "system", "content": REWRITE_SYSTEM},
        {"role": "user", "content": f"{convo}\nuser: {task.query}\n\nStandalone query:"},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rewrites", type=int, default=10, help="real rewrites to time (0: none)")
    ap.add_argument(
        "--only",
        default=None,
        help="run only variants whose name holds one of these (comma-separated)",
    )
    ap.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        help="the full results as JSON, to stdout (no table) or to the file given",
    )
    ap.add_argument("--rewrite-only", action="store_true", help="only (e): no index, no variants")
    a = ap.parse_args()
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))))
    every = load_tasks(a.data / "tasks.jsonl")
    tasks = [t for t in every if t.answerability in ("ANSWERABLE", "PARTIAL")][: a.limit]
    if a.rewrite_only:
        print(json.dumps({"cpu_flags": flags, **rewrite_cost(tasks, a.rewrites)}, indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="ragserve-conv-") as tmp:
        pipe = RagPipeline(Settings(data_dir=Path(tmp), collection="mtrag"))
        pipe.warm_up(generation=False)
        started = time.perf_counter()
        pipe.ingest([a.data / "corpus.jsonl"])
        ingest_s = time.perf_counter() - started
        weights = CorpusTermWeights(pipe.index)
        started = time.perf_counter()
        weights.refresh()
        idf_ms = (time.perf_counter() - started) * 1000
        mixer = MixingEmbedder(pipe.retriever.embedder)
        pipe.retriever.embedder = mixer  # type: ignore[assignment]
        pipe.search(pipe.process("warm up the search path"))
        variants = build_variants(weights)
        if a.only:
            wanted = a.only.split(",")
            variants = {k: v for k, v in variants.items() if any(w in k for w in wanted)}
        results = {}
        for name, variant in variants.items():
            results[name] = run_variant(pipe, mixer, variant, tasks)
            # A row as soon as it is known: the run is long on a busy CPU.
            print(markdown({name: results[name]}).splitlines()[2], file=sys.stderr, flush=True)
        pipe.close()
    report: dict[str, Any] = {
        "cpu_flags": flags,
        "tasks": len(tasks),
        "ingest_s": ingest_s,
        "idf_table_ms": idf_ms,
        "variants": results,
        "small_talk": small_talk_census(every),
    }
    if a.rewrites:
        report["rewrite"] = rewrite_cost(tasks, a.rewrites)
    if a.json == "-":
        print(json.dumps(report, indent=1))
        return
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"CPU flags: {flags}\n")
    print(f"{len(tasks)} answerable + partial tasks; IDF table {idf_ms:.0f} ms\n")
    if results:
        print(markdown(results))
    print("\nSmall talk (last turns called chit-chat):")
    for label, entry in report["small_talk"].items():
        print(f"- {label}: {len(entry['chitchat'])} of {entry.get('n', '-')}: {entry['chitchat']}")
    if "rewrite" in report:
        rw = report["rewrite"]
        print(
            f"\nRewrite by the reader: prompt p50 {rw['prompt_tokens_p50']:.0f} tokens, p95 "
            f"{rw['prompt_tokens_p95']:.0f}; {rw['rewrite_seconds_p50']:.2f} s per turn (p50 of "
            f"{len(rw['samples'])})"
        )
        for s in rw["samples"]:
            print(f"  - {s['seconds']:.1f} s  {s['query']!r} -> {s['rewrite']!r}")


if __name__ == "__main__":
    main()
