"""Conversation-level evaluation: each task's last user turn asked with its earlier turns.

Any tasks file of the MTRAG shape works (``mtrag-un-dev/tasks.jsonl``): one JSON object a line
with ``task_id``, ``input`` (the conversation so far, ``{"speaker": "user"|"agent", "text"}``,
the last entry the user turn to answer), ``contexts`` (reference passages, ``document_id``),
``targets`` (``[{"text"}]``, the reference answer) and ``answerability`` (ANSWERABLE, PARTIAL,
UNANSWERABLE or UNDERSPECIFIED; a string or a one-element list). ``Multi-Turn`` is kept when
present. The corpus is a BEIR ``corpus.jsonl`` whose ``_id`` is the passages' ``document_id``.

Every turn goes through ``RagPipeline.stream(query, history)``, the path ``/chat`` takes, so
time to first token is measured as a client sees it. Reported per label: a reference passage
among the returned sources, a cited source being a reference passage, refusals, clarifying
questions, confident answers, content-word recall and ROUGE-L F1 against the reference answer,
and TTFT / total p50 and p95.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragserve.config import Settings
from ragserve.errors import DatasetError, GenerationError
from ragserve.types import Answer, Message

__all__ = [
    "LABELS",
    "TARGETS",
    "ConversationTask",
    "TaskResult",
    "Turn",
    "content_recall",
    "content_words",
    "evaluate_conversations",
    "load_tasks",
    "parse_task",
    "rouge_l",
    "score_answer",
    "summarise",
    "targets_table",
    "to_history",
    "write_report",
]

LABELS = ("answerable", "partial", "unanswerable", "underspecified")
ANSWERABLE_GROUP = "answerable+partial"
_ROLES = {"user": "user", "agent": "assistant"}
_REQUIRED = ("task_id", "input", "contexts", "targets", "answerability")
_HINT = (
    'Each line needs "task_id", "input" ([{"speaker": "user"|"agent", "text"}], ending with a '
    'user turn), "contexts" ([{"document_id"}]), "targets" ([{"text"}]) and "answerability".'
)
# [n] citation markers: not part of what a person reads for the answer's content, and their
# digits would match numbers in the reference. (generation.citations.strip_markers also spares
# code spans; this data has no code, and that module is being moved.)
_MARKER = re.compile(r"\s*\[\d+\]")


@dataclass(frozen=True, slots=True)
class Turn:
    speaker: str
    """'user' or 'agent', as the tasks file says."""
    text: str


@dataclass(frozen=True, slots=True)
class ConversationTask:
    task_id: str
    label: str
    """Lower-case answerability: one of :data:`LABELS`."""
    turns: tuple[Turn, ...]
    """The conversation so far, oldest first; the last is the user turn to answer."""
    reference_ids: frozenset[str]
    target: str
    multi_turn: str = "N/A"

    @property
    def query(self) -> str:
        return self.turns[-1].text

    @property
    def history(self) -> list[Message]:
        return to_history(self.turns[:-1])


@dataclass(slots=True)
class TaskResult:
    """One task's answer, scored; a row of the per-task JSONL."""

    task_id: str
    label: str
    multi_turn: str
    history_turns: int
    query: str
    standalone_query: str | None
    kind: str
    refused: bool
    refusal_reason: str | None
    hit: bool | None
    """A reference passage is among the returned sources (None: the task has none)."""
    cited_ref: bool | None
    """A cited source is a reference passage (None: the answer cites nothing)."""
    recall: float
    rougeL: float
    ttft_ms: float
    total_ms: float
    answer: str
    target: str
    error: str | None = None
    """Why the turn got no answer at all (the reader failed twice, e.g. timed out)."""
    draft: str | None = None
    """What the reader wrote, for an answer the checks after generation refused (never shown
    to a user; kept so the checks can be studied offline against ``context``)."""
    context: list[str] | None = None
    """The sources' text as the reader was given it, with ``draft``."""


# --- reading the tasks file ----------------------------------------------------------------------


def to_history(turns: Iterable[Turn]) -> list[Message]:
    """The tasks file's speakers as chat roles: 'agent' is the assistant."""
    return [Message(_ROLES[t.speaker], t.text) for t in turns]  # type: ignore[arg-type]


def load_tasks(path: Path) -> list[ConversationTask]:
    if not path.is_file():
        raise DatasetError(
            f"Tasks file not found: {path}",
            hint="Point --tasks at mtrag-un-dev/tasks.jsonl or a file of that shape.",
        )
    tasks = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                tasks.append(parse_task(_json_line(line, f"{path}:{lineno}"), f"{path}:{lineno}"))
    if not tasks:
        raise DatasetError(f"{path} holds no tasks.", hint=_HINT)
    return tasks


def _json_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not JSON ({exc.msg}).", hint=_HINT) from exc
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: not a JSON object.", hint=_HINT)
    return row


def parse_task(row: dict[str, Any], where: str) -> ConversationTask:
    """One line's task; ``where`` ("file:line") leads every error message."""
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}.", hint=_HINT)
    turns = _turns(row["input"], where)
    targets = row["targets"]
    if not isinstance(targets, list) or not targets or not _has_text(targets[0]):
        raise DatasetError(f"{where}: targets must be a list of {{'text'}} objects.", hint=_HINT)
    contexts = row["contexts"]
    if not isinstance(contexts, list) or not all(
        isinstance(c, dict) and "document_id" in c for c in contexts
    ):
        raise DatasetError(f"{where}: every context needs a document_id.", hint=_HINT)
    return ConversationTask(
        task_id=str(row["task_id"]),
        label=_label(row["answerability"], where),
        turns=turns,
        reference_ids=frozenset(str(c["document_id"]) for c in contexts),
        target=str(targets[0]["text"]),
        multi_turn=_first(row.get("Multi-Turn")) or "N/A",
    )


def _turns(value: Any, where: str) -> tuple[Turn, ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: input must be a non-empty list of turns.", hint=_HINT)
    turns = []
    for i, t in enumerate(value, 1):
        if not isinstance(t, dict) or t.get("speaker") not in _ROLES or not _has_text(t):
            raise DatasetError(
                f"{where}: input turn {i} needs a speaker ('user' or 'agent') and a text.",
                hint=_HINT,
            )
        turns.append(Turn(t["speaker"], t["text"]))
    if turns[-1].speaker != "user" or not turns[-1].text.strip():
        raise DatasetError(f"{where}: the last input turn must be a user's question.", hint=_HINT)
    return tuple(turns)


def _has_text(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("text"), str)


def _first(value: Any) -> str | None:
    # MTRAG writes labels as one-element lists; a plain string is accepted as well.
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value is not None else None


def _label(value: Any, where: str) -> str:
    label = (_first(value) or "").lower()
    if label not in LABELS:
        raise DatasetError(
            f"{where}: answerability {value!r} is not one of {', '.join(LABELS).upper()}.",
            hint=_HINT,
        )
    return label


# --- answer quality --------------------------------------------------------------------------------


def content_words(text: str) -> set[str]:
    """Lower-cased content words of ``text``, stop words removed (``ragserve.query.keywords``),
    Snowball-stemmed (PyStemmer, as BM25 here) so "batteries" matches "battery"."""
    import Stemmer

    words = [w.lower() for w in _keywords(_MARKER.sub("", text))]
    return set(Stemmer.Stemmer("english").stemWords(words))


def _keywords(text: str) -> list[str]:
    # Imported here, and from either layout: issue 35 split ragserve.query into a package
    # (ragserve.query.keywords.keywords); the baseline commit 4dda4bd has the one module.
    try:
        from ragserve.query.keywords import keywords
    except ImportError:
        from ragserve.query import keywords  # type: ignore[attr-defined,no-redef]
    return list(keywords(text))


def content_recall(answer: str, reference: str) -> float:
    """Share of the reference's content words that the answer holds (0 if it has none)."""
    ref = content_words(reference)
    return len(ref & content_words(answer)) / len(ref) if ref else 0.0


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 (``rouge-score``, Porter-stemmed), the longest common subsequence."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, _MARKER.sub("", answer))["rougeL"].fmeasure)


# --- one task --------------------------------------------------------------------------------------


def score_answer(
    task: ConversationTask, answer: Answer, ttft_ms: float, total_ms: float
) -> TaskResult:
    """A task's result from the pipeline's answer and the client-side clocks."""
    refs = task.reference_ids
    by_chunk = {h.chunk.id: h.chunk.doc_id for h in answer.sources}
    cited = [by_chunk[c.chunk_id] for c in answer.citations if c.chunk_id in by_chunk]
    # A refusal's text is the refusal sentence, not an answer: it holds none of the reference.
    text = "" if answer.refused else answer.text
    return TaskResult(
        task_id=task.task_id,
        label=task.label,
        multi_turn=task.multi_turn,
        history_turns=len(task.turns) - 1,
        query=task.query,
        standalone_query=answer.standalone_query,
        kind=answer.kind,
        refused=answer.refused,
        refusal_reason=answer.refusal_reason,
        hit=any(h.chunk.doc_id in refs for h in answer.sources) if refs else None,
        cited_ref=any(d in refs for d in cited) if cited else None,
        recall=round(content_recall(text, task.target), 4) if text else 0.0,
        rougeL=round(rouge_l(text, task.target), 4) if text else 0.0,
        ttft_ms=round(ttft_ms, 1),
        total_ms=round(total_ms, 1),
        answer=answer.text,
        target=task.target,
    )


def ask(pipeline: Any, task: ConversationTask, attempts: int = 2) -> TaskResult:
    """Stream the task's last turn with its history; TTFT is the first 'token' event.

    A reader failure (a timeout on a loaded machine) is retried once, then recorded as the
    task's ``error`` rather than ending a half-hour run.
    """
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            return _ask_once(pipeline, task, started)
        except GenerationError as exc:
            if attempt == attempts:
                return _failed(task, str(exc), (time.perf_counter() - started) * 1000)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns


def _ask_once(pipeline: Any, task: ConversationTask, started: float) -> TaskResult:
    reader = getattr(pipeline, "generator", None)
    recorder = reader if isinstance(reader, DraftRecorder) else None
    if recorder is not None:
        recorder.draft, recorder.context = "", None
    ttft: float | None = None
    final: Answer | None = None
    for event in pipeline.stream(task.query, task.history):
        if event.kind == "token" and ttft is None:
            ttft = (time.perf_counter() - started) * 1000
        elif event.kind == "done":
            final = event.answer
    total = (time.perf_counter() - started) * 1000
    assert final is not None, "the stream ended without its 'done' event"
    row = score_answer(task, final, total if ttft is None else ttft, total)
    if recorder is not None and final.refused and recorder.context is not None:
        row.draft, row.context = recorder.draft, recorder.context
    return row


class DraftRecorder:
    """The reader, with what it last wrote and was given kept: the eval's view of a draft
    the checks refused. Asks run one at a time, so "last" is the task's own."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.draft = ""
        self.context: list[str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)

    def stream(self, question: str, context: Any, history: Any = ()) -> Iterator[str]:
        self.draft, self.context = "", list(context.texts)
        pieces = self.reader.stream(question, context, history)
        try:
            for piece in pieces:
                self.draft += piece
                yield piece
        finally:  # the pipeline closes this stream to stop the model: pass that on
            pieces.close()


def _failed(task: ConversationTask, error: str, elapsed_ms: float) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        label=task.label,
        multi_turn=task.multi_turn,
        history_turns=len(task.turns) - 1,
        query=task.query,
        standalone_query=None,
        kind="error",
        refused=False,
        refusal_reason=None,
        hit=None,
        cited_ref=None,
        recall=0.0,
        rougeL=0.0,
        ttft_ms=round(elapsed_ms, 1),
        total_ms=round(elapsed_ms, 1),
        answer="",
        target=task.target,
        error=error,
    )


# --- figures ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    group: str
    metric: str
    op: str
    """'>=' or '<='."""
    value: float


TARGETS = (
    Target(ANSWERABLE_GROUP, "source_hit", ">=", 0.95),
    Target(ANSWERABLE_GROUP, "refused", "<=", 0.10),
    Target(ANSWERABLE_GROUP, "cited_is_reference", ">=", 0.85),
    Target(ANSWERABLE_GROUP, "content_recall_answered", ">=", 0.50),
    Target("unanswerable", "refused", ">=", 0.85),
    Target("underspecified", "clarify", ">=", 0.50),
    Target("underspecified", "confident_answer", "<=", 0.25),
    Target("all", "ttft_p50_ms", "<=", 4000.0),
    Target("all", "total_p50_ms", "<=", 8000.0),
)

DEFINITIONS = {
    "source_hit": "a reference passage (contexts' document_id) is among the answer's sources; "
    "tasks with reference passages only",
    "refused": "answer.refused (for unanswerable turns: said plainly the documents do not hold it)",
    "cited_is_reference": "of the answers that cite, the share where a cited source is a "
    "reference passage",
    "clarify": "answer.kind == 'clarify' (a question back)",
    "confident_answer": "answer.kind == 'answer' and not refused",
    "content_recall": "share of the reference answer's content words (ragserve.query.keywords, "
    "lower-cased, Snowball-stemmed) found in the answer; '_answered' averages the non-refused "
    "turns, '_all' every turn with a refusal scoring 0",
    "rougeL": "ROUGE-L F1 (rouge-score 0.1.2, Porter stemmer) against the reference answer; "
    "'_answered' / '_all' as for content_recall",
    "ttft_ms": "client-side: from calling RagPipeline.stream to its first 'token' event (a "
    "refusal's one token included)",
    "total_ms": "client-side: from calling RagPipeline.stream to its 'done' event",
    "errors": "turns the reader failed on twice (e.g. its time-out): counted, and left out of "
    "every rate and average",
}


def _rate(values: Sequence[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _figures(every: Sequence[TaskResult]) -> dict[str, Any]:
    # A turn the reader failed on has no answer to score: it is counted, not averaged in.
    rows = [r for r in every if r.error is None]
    answered = [r for r in rows if not r.refused]
    ttft, total = [r.ttft_ms for r in rows], [r.total_ms for r in rows]
    return {
        "tasks": len(every),
        "errors": len(every) - len(rows),
        "source_hit": _rate([r.hit for r in rows]),
        "refused": _rate([r.refused for r in rows]),
        "cited_is_reference": _rate([r.cited_ref for r in rows]),
        "answers_citing": sum(r.cited_ref is not None for r in rows),
        "clarify": _rate([r.kind == "clarify" for r in rows]),
        "confident_answer": _rate([r.kind == "answer" and not r.refused for r in rows]),
        "content_recall_answered": _mean([r.recall for r in answered]),
        "content_recall_all": _mean([r.recall for r in rows]),
        "rougeL_answered": _mean([r.rougeL for r in answered]),
        "rougeL_all": _mean([r.rougeL for r in rows]),
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p95_ms": _pct(ttft, 95),
        "total_p50_ms": _pct(total, 50),
        "total_p95_ms": _pct(total, 95),
        "refusal_reasons": dict(Counter(r.refusal_reason for r in rows if r.refused)),
        "kinds": dict(Counter(r.kind for r in rows)),
        "history_turns_p50": _pct([r.history_turns for r in rows], 50),
    }


def _groups(rows: Sequence[TaskResult]) -> dict[str, list[TaskResult]]:
    groups = {label: [r for r in rows if r.label == label] for label in LABELS}
    groups[ANSWERABLE_GROUP] = groups["answerable"] + groups["partial"]
    groups["all"] = list(rows)
    return groups


def _met(target: Target, measured: float | None) -> bool | None:
    if measured is None:
        return None
    return measured >= target.value if target.op == ">=" else measured <= target.value


def summarise(rows: Sequence[TaskResult], settings: Settings | None = None) -> dict[str, Any]:
    """The figures per label, for answerable+partial and all tasks, and the target rows."""
    groups = {name: _figures(g) for name, g in _groups(rows).items() if g}
    targets = []
    for t in TARGETS:
        measured = groups.get(t.group, {}).get(t.metric)
        targets.append({**asdict(t), "measured": measured, "met": _met(t, measured)})
    generation = settings.generation if settings is not None else None
    return {
        "tasks": len(rows),
        "groups": groups,
        "targets": targets,
        "definitions": DEFINITIONS,
        "generator": generation.generator if generation else None,
        "model": generation.llm_model_path
        if generation and generation.generator == "llama"
        else None,
    }


# --- the run ---------------------------------------------------------------------------------------


def evaluate_conversations(
    settings: Settings,
    tasks_file: Path,
    corpus: Path | None = None,
    *,
    limit: int | None = None,
    progress: bool = True,
    report: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Ingest the corpus into a throwaway index, ask every task (the first ``limit``), score.

    With ``report``, each row is appended to ``report/tasks.jsonl`` as soon as it is scored,
    so a stopped run keeps what it did; ``resume`` keeps those rows (not the failed ones) and
    asks only the remaining tasks.
    """
    tasks = load_tasks(tasks_file)[:limit] if limit else load_tasks(tasks_file)
    corpus = corpus or tasks_file.parent / "corpus.jsonl"
    if not corpus.is_file():
        raise DatasetError(
            f"Corpus not found: {corpus}",
            hint="Pass --corpus, or put corpus.jsonl beside the tasks file.",
        )
    if resume and report is None:
        raise DatasetError("--resume needs --report: the rows to resume are in its tasks.jsonl.")
    wanted = {t.task_id for t in tasks}
    done = {r.task_id: r for r in _done_rows(report, resume) if r.task_id in wanted}
    todo = [t for t in tasks if t.task_id not in done]
    sink = _row_sink(report, list(done.values()))
    if todo:
        # A data dir of its own: the run neither reads nor leaves anything in the configured
        # index.
        with tempfile.TemporaryDirectory(prefix="ragserve-eval-conv-") as data_dir:
            _run(settings.replace(data_dir=data_dir), todo, corpus, progress, sink)
    rows = [sink.rows[t.task_id] for t in tasks if t.task_id in sink.rows]
    result = summarise(rows, settings) | {"tasks_file": str(tasks_file), "corpus": str(corpus)}
    if report is not None:
        write_report(report, rows, result)
    return result


def _done_rows(report: Path | None, resume: bool) -> list[TaskResult]:
    path = report / "tasks.jsonl" if report is not None else None
    if not resume or path is None or not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = TaskResult(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # the half-written last line of a killed run
        if row.error is None:  # a failed turn is asked again
            rows.append(row)
    return rows


class _RowSink:
    """Keeps the scored rows, and appends each to the report's tasks.jsonl as it comes."""

    def __init__(self, path: Path | None, done: Sequence[TaskResult]) -> None:
        self.path = path
        self.rows = {r.task_id: r for r in done}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(_jsonl(r) for r in done), encoding="utf-8")

    def __call__(self, row: TaskResult) -> None:
        self.rows[row.task_id] = row
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(_jsonl(row))


def _row_sink(report: Path | None, done: Sequence[TaskResult]) -> _RowSink:
    return _RowSink(report / "tasks.jsonl" if report is not None else None, done)


def _jsonl(row: TaskResult) -> str:
    return json.dumps(asdict(row), ensure_ascii=False) + "\n"


def _run(
    settings: Settings,
    tasks: Sequence[ConversationTask],
    corpus: Path,
    progress: bool,
    sink: Callable[[TaskResult], None],
) -> None:
    from tqdm.auto import tqdm

    from ragserve import RagPipeline
    from ragserve.evaluation.answers import index_corpus

    with RagPipeline(settings.replace(collection="eval-conversations")) as pipeline:
        pipeline.warm_up()
        pipeline.generator = DraftRecorder(pipeline.generator)
        index_corpus(pipeline, corpus, progress)
        bar: Callable[..., Iterable[ConversationTask]] = tqdm
        for task in bar(tasks, desc="conversations", disable=not progress, dynamic_ncols=True):
            sink(ask(pipeline, task))


# --- tables, plots, report -----------------------------------------------------------------------

_COLUMNS = (
    ("hit", "source_hit"),
    ("refused", "refused"),
    ("cited=ref", "cited_is_reference"),
    ("clarify", "clarify"),
    ("confident", "confident_answer"),
    ("recall ans/all", ("content_recall_answered", "content_recall_all")),
    ("ROUGE-L ans/all", ("rougeL_answered", "rougeL_all")),
    ("TTFT p50/p95 s", ("ttft_p50_ms", "ttft_p95_ms")),
    ("total p50/p95 s", ("total_p50_ms", "total_p95_ms")),
)


def _cell(figures: dict[str, Any], key: str | tuple[str, str]) -> str:
    if isinstance(key, tuple):
        return " / ".join(_cell(figures, k) for k in key)
    value = figures.get(key)
    if value is None:
        return "-"
    return f"{value / 1000:.1f}" if key.endswith("_ms") else f"{value:.2f}"


def _label_rows(result: dict[str, Any]) -> list[list[str]]:
    return [
        [name, str(f["tasks"]), str(f["errors"]), *(_cell(f, key) for _, key in _COLUMNS)]
        for name, f in result["groups"].items()
    ]


def _target_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in result["targets"]:
        scale = 1000 if t["metric"].endswith("_ms") else 1
        unit = " s" if scale > 1 else ""
        measured = "-" if t["measured"] is None else f"{t['measured'] / scale:.2f}{unit}"
        met = {True: "yes", False: "no", None: "-"}[t["met"]]
        rows.append(
            [t["group"], t["metric"], f"{t['op']} {t['value'] / scale:.2f}{unit}", measured, met]
        )
    return rows


def targets_table(result: dict[str, Any]) -> tuple[Any, Any]:
    """Two rich tables: the figures per label, and each target against what was measured."""
    from rich.table import Table

    labels = Table(title=f"{result['tasks']} conversation turns, {result['generator']}")
    for name in ("label", "n", "errors", *(c for c, _ in _COLUMNS)):
        labels.add_column(name, justify="left" if name == "label" else "right")
    for row in _label_rows(result):
        labels.add_row(*row)
    targets = Table(title="targets (issue 36)")
    for name in ("group", "metric", "target", "measured", "met"):
        targets.add_column(name)
    for row in _target_rows(result):
        targets.add_row(*row)
    return labels, targets


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_report(out: Path, rows: Sequence[TaskResult], result: dict[str, Any]) -> None:
    """report.md, results.json, tasks.jsonl (one scored row a task, for diffing runs) and
    the plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tasks.jsonl").write_text("".join(_jsonl(r) for r in rows), encoding="utf-8")
    _rates_plot(out / "rates.png", result)
    _latency_plot(out / "latency.png", rows)
    head = ["label", "n", "errors", *(c for c, _ in _COLUMNS)]
    text = [
        f"# Conversations: {result['tasks']} turns of `{Path(result['tasks_file']).name}`",
        "",
        f"Reader: {result['generator']} ({result['model'] or '-'}). Each task's last user turn "
        "asked through `RagPipeline.stream(query, history)` (the `/chat` path) with the "
        "earlier turns as history, over a throwaway index of the corpus.",
        "",
        "## Per label",
        "",
        _markdown(head, _label_rows(result)),
        "",
        "## Targets",
        "",
        _markdown(["group", "metric", "target", "measured", "met"], _target_rows(result)),
        "",
        "## Refusal reasons and reply kinds",
        "",
        _markdown(
            ["group", "refusal reasons", "kinds"],
            [
                [name, _counts(f["refusal_reasons"]), _counts(f["kinds"])]
                for name, f in result["groups"].items()
            ],
        ),
        "",
        "## Definitions",
        "",
        *(f"- **{k}**: {v}" for k, v in result["definitions"].items()),
        "",
        "![rates per label](rates.png)",
        "",
        "![latency per label](latency.png)",
        "",
        "Every task's answer and scores: `tasks.jsonl`; all figures: `results.json`.",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_RATES = (
    "source_hit",
    "refused",
    "cited_is_reference",
    "clarify",
    "confident_answer",
    "content_recall_answered",
    "rougeL_answered",
)


def _rates_plot(path: Path, result: dict[str, Any]) -> None:
    """A group of bars per label, one bar per rate; missing figures (no such tasks) are gaps."""
    plt = _pyplot()
    names = [n for n in (*LABELS, ANSWERABLE_GROUP) if n in result["groups"]]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(_RATES)
    for i, metric in enumerate(_RATES):
        values = [result["groups"][n].get(metric) for n in names]
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [v or 0 for v in values], width, label=metric)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
    ax.set_xticklabels([f"{n} ({result['groups'][n]['tasks']})" for n in names])
    ax.set_ylim(0, 1)
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title(f"{result['tasks']} turns, {result['generator']}: rates per label")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_plot(path: Path, rows: Sequence[TaskResult]) -> None:
    """TTFT and total per label as box plots: the spread matters as much as the median."""
    plt = _pyplot()
    names = [n for n in LABELS if any(r.label == n for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "ttft_ms", "first token"), (axes[1], "total_ms", "total")):
        data = [[getattr(r, key) / 1000 for r in rows if r.label == n] for n in names]
        ax.boxplot(data, tick_labels=names)
        ax.set_title(title)
        ax.set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
