"""``ragserve eval conversations``: the tasks file, the role mapping and the metrics, on
hand-made examples (no models)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from ragserve.errors import DatasetError, GenerationTimeoutError
from ragserve.evaluation.conversations import (
    ConversationTask,
    TaskResult,
    Turn,
    ask,
    content_recall,
    load_tasks,
    rouge_l,
    score_answer,
    summarise,
    to_history,
    write_report,
)
from ragserve.types import Answer, Chunk, Citation, Hit, Message


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_id": "c1<::>3",
        "input": [
            {"speaker": "user", "text": "What is a primary source?"},
            {"speaker": "agent", "text": "An artifact created at the time under study."},
            {"speaker": "user", "text": "And a secondary one?"},
        ],
        "contexts": [{"document_id": "d1", "text": "..."}, {"document_id": "d2", "text": "..."}],
        "targets": [{"text": "A secondary source interprets primary sources."}],
        "answerability": ["ANSWERABLE"],
        "Multi-Turn": ["Follow-up"],
    }
    return row | changes


def _write(path: Path, rows: Sequence[dict[str, Any] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_task_reads_its_turn_history_references_and_label(tmp_path: Path) -> None:
    plain = _row(task_id="c2<::>1", answerability="UNDERSPECIFIED", contexts=[])
    del plain["Multi-Turn"]
    tasks = load_tasks(_write(tmp_path / "tasks.jsonl", [_row(), "", plain]))
    first, second = tasks
    assert first.query == "And a secondary one?"
    assert first.label == "answerable" and first.multi_turn == "Follow-up"
    assert first.reference_ids == {"d1", "d2"}
    assert first.target == "A secondary source interprets primary sources."
    assert [m.role for m in first.history] == ["user", "assistant"]
    assert first.history[1].content == "An artifact created at the time under study."
    assert second.label == "underspecified" and second.multi_turn == "N/A"
    assert second.reference_ids == frozenset()


def test_agent_turns_are_the_assistant_role() -> None:
    turns = [Turn("user", "q1"), Turn("agent", "a1"), Turn("user", "q2"), Turn("agent", "a2")]
    assert to_history(turns) == [
        Message("user", "q1"),
        Message("assistant", "a1"),
        Message("user", "q2"),
        Message("assistant", "a2"),
    ]


def test_a_missing_field_names_the_line(tmp_path: Path) -> None:
    broken = _row()
    del broken["targets"]
    path = _write(tmp_path / "tasks.jsonl", [_row(), broken])
    with pytest.raises(DatasetError, match=r"tasks\.jsonl:2: missing targets\."):
        load_tasks(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r":1: not JSON"),
        ("[1, 2]", r":1: not a JSON object"),
        (_row(answerability="MAYBE"), r":1: answerability 'MAYBE'"),
        (_row(input=[]), r":1: input must be a non-empty list"),
        (_row(input=[{"speaker": "bot", "text": "hi"}]), r":1: input turn 1 needs a speaker"),
        (_row(input=[{"speaker": "agent", "text": "hi"}]), r":1: the last input turn"),
        (_row(contexts=[{"text": "no id"}]), r":1: every context needs a document_id"),
        (_row(targets=[]), r":1: targets must be"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, line: dict[str, Any] | str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_tasks(_write(tmp_path / "tasks.jsonl", [line]))


def test_the_cli_prints_the_error_and_exits_non_zero(tmp_path: Path) -> None:
    from ragserve.cli.evaluate import app

    broken = _row()
    del broken["input"]
    path = _write(tmp_path / "tasks.jsonl", [_row(), _row(), broken])
    result = CliRunner().invoke(app, ["conversations", "--tasks", str(path), "--json"])
    assert result.exit_code == 2
    assert "tasks.jsonl:3: missing input" in result.stderr
    assert result.stdout == ""


def test_content_recall_is_the_share_of_reference_content_words() -> None:
    reference = "Batteries last ten years in Toyota cars."
    # batteri, last, ten, year, toyota, car: the answer holds all but "car" ("in" is a stop word).
    assert content_recall("Toyota batteries last about ten years.", reference) == pytest.approx(
        5 / 6
    )
    assert content_recall("Something else entirely.", reference) == 0.0
    # A citation marker's digit is not the reference's "1".
    assert content_recall("It costs a dollar [1].", "It costs 1 dollar.") == pytest.approx(2 / 3)
    assert content_recall("anything", "the of and") == 0.0  # no content words to recall


def test_rouge_l_is_the_lcs_f1() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS 5 of 5 answer and 6 reference tokens: F1 = 2 * 1 * 5/6 / (1 + 5/6) = 10/11.
    assert rouge_l("the cat on the mat [2]", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("dogs bark", "the cat sat") == 0.0


def _task(refs: Sequence[str] = ("r1",), label: str = "answerable") -> ConversationTask:
    return ConversationTask(
        task_id="t",
        label=label,
        turns=(Turn("user", "q0"), Turn("agent", "a0"), Turn("user", "How long do they last?")),
        reference_ids=frozenset(refs),
        target="Batteries last ten years.",
    )


def _hit(doc_id: str) -> Hit:
    chunk = Chunk(f"{doc_id}#0", doc_id, doc_id, f"text of {doc_id}", 0, 0, 10, "h")
    return Hit(chunk, 0.5)


def _answer(cite: Sequence[str], *, refused: bool = False, kind: str = "answer") -> Answer:
    sources = [_hit("x1"), _hit("r1"), _hit("x2")]
    citations = [Citation(i + 1, f"{d}#0", d, None, None, "") for i, d in enumerate(cite)]
    return Answer(
        query="How long do they last?",
        text="I couldn't find that in the documents." if refused else "They last ten years [1].",
        sources=sources,
        citations=citations,
        refused=refused,
        refusal_reason="low_support" if refused else None,
        standalone_query="How long do they last? (batteries)",
        kind=kind,  # type: ignore[arg-type]
    )


def test_a_result_matches_sources_and_citations_by_document_id() -> None:
    cited_other = score_answer(_task(), _answer(["x2"]), 900.0, 2000.0)
    assert cited_other.hit is True and cited_other.cited_ref is False
    assert cited_other.recall == pytest.approx(3 / 4)  # batteri is missing
    assert cited_other.standalone_query == "How long do they last? (batteries)"
    assert cited_other.history_turns == 2
    assert score_answer(_task(), _answer(["x2", "r1"]), 1, 2).cited_ref is True
    assert score_answer(_task(["zz"]), _answer(["r1"]), 1, 2).hit is False
    # No references (unanswerable) or no citations: not applicable rather than a miss.
    assert score_answer(_task([]), _answer([]), 1, 2).hit is None
    refused = score_answer(_task(), _answer([], refused=True, kind="refusal"), 1, 2)
    assert refused.cited_ref is None and refused.recall == 0.0 and refused.rougeL == 0.0
    assert refused.refusal_reason == "low_support"


def _result(label: str, **changes: Any) -> TaskResult:
    base: dict[str, Any] = {
        "task_id": "t",
        "label": label,
        "multi_turn": "N/A",
        "history_turns": 2,
        "query": "q",
        "standalone_query": "q",
        "kind": "answer",
        "refused": False,
        "refusal_reason": None,
        "hit": True,
        "cited_ref": True,
        "recall": 0.5,
        "rougeL": 0.25,
        "ttft_ms": 1000.0,
        "total_ms": 3000.0,
        "answer": "a",
        "target": "t",
    }
    return TaskResult(**(base | changes))


def test_figures_per_label_and_for_answerable_plus_partial() -> None:
    refusal = {"refused": True, "kind": "refusal", "recall": 0.0, "rougeL": 0.0, "cited_ref": None}
    rows = [
        _result("answerable", recall=0.8, ttft_ms=2000.0, total_ms=5000.0),
        _result("answerable", hit=False, **refusal, refusal_reason="model"),
        _result("partial", recall=0.2, cited_ref=False, ttft_ms=3000.0),
        _result("unanswerable", hit=None, **refusal, refusal_reason="low_support"),
        _result("underspecified", hit=None, cited_ref=None, kind="clarify"),
    ]
    result = summarise(rows)
    both = result["groups"]["answerable+partial"]
    assert both["tasks"] == 3
    assert both["source_hit"] == pytest.approx(2 / 3, abs=1e-4)
    assert both["refused"] == pytest.approx(1 / 3, abs=1e-4)
    assert both["cited_is_reference"] == pytest.approx(0.5)  # of the two answers that cite
    assert both["content_recall_answered"] == pytest.approx(0.5)
    assert both["content_recall_all"] == pytest.approx(1.0 / 3, abs=1e-4)
    assert both["ttft_p50_ms"] == pytest.approx(2000.0)
    assert both["refusal_reasons"] == {"model": 1}
    assert result["groups"]["unanswerable"]["source_hit"] is None
    spec = result["groups"]["underspecified"]
    assert spec["clarify"] == 1.0 and spec["confident_answer"] == 0.0
    met = {(t["group"], t["metric"]): t["met"] for t in result["targets"]}
    assert met[("unanswerable", "refused")] is True
    assert met[("answerable+partial", "refused")] is False
    assert met[("underspecified", "clarify")] is True
    assert met[("all", "ttft_p50_ms")] is True
    assert "partial" not in summarise(rows[:2])["groups"]  # no such tasks: no figures


def test_ask_streams_the_last_turn_with_the_history_and_times_the_first_token() -> None:
    seen: dict[str, Any] = {}

    class FakePipeline:
        def stream(self, query: str, history: Sequence[Message]) -> Iterator[Any]:
            seen["query"], seen["history"] = query, list(history)
            yield SimpleNamespace(kind="token", text="They last ", answer=None)
            yield SimpleNamespace(kind="token", text="ten years [1].", answer=None)
            yield SimpleNamespace(kind="done", text="", answer=_answer(["r1"]))

    result = ask(FakePipeline(), _task())
    assert seen["query"] == "How long do they last?"
    assert seen["history"] == [Message("user", "q0"), Message("assistant", "a0")]
    assert 0 <= result.ttft_ms <= result.total_ms
    assert result.cited_ref is True and result.kind == "answer"


def test_a_reader_failure_is_retried_once_then_recorded_and_left_out_of_the_rates() -> None:
    class FlakyPipeline:
        def __init__(self, failures: int) -> None:
            self.failures = failures
            self.calls = 0

        def stream(self, query: str, history: Sequence[Message]) -> Iterator[Any]:
            self.calls += 1
            if self.calls <= self.failures:
                raise GenerationTimeoutError("The local model did not finish within 60 s.")
            yield SimpleNamespace(kind="token", text="They last ten years [1].", answer=None)
            yield SimpleNamespace(kind="done", text="", answer=_answer(["r1"]))

    once = FlakyPipeline(failures=1)
    assert ask(once, _task()).error is None and once.calls == 2
    failed = ask(FlakyPipeline(failures=2), _task())
    assert failed.error and "within 60 s" in failed.error and failed.kind == "error"
    figures = summarise([failed, _result("answerable", refused=True)])["groups"]["answerable"]
    assert figures["tasks"] == 2 and figures["errors"] == 1
    assert figures["refused"] == 1.0 and figures["source_hit"] == 1.0  # the failure left out


def test_the_report_holds_tables_rows_and_plots(tmp_path: Path) -> None:
    rows = [_result("answerable"), _result("unanswerable", refused=True, kind="refusal")]
    result = summarise(rows) | {"tasks_file": "x/tasks.jsonl", "corpus": "x/corpus.jsonl"}
    write_report(tmp_path, rows, result)
    report = (tmp_path / "report.md").read_text()
    assert "| answerable+partial |" in report and "rates.png" in report
    lines = (tmp_path / "tasks.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines] == ["answerable", "unanswerable"]
    assert json.loads((tmp_path / "results.json").read_text())["tasks"] == 2
    assert (tmp_path / "rates.png").stat().st_size > 0 and (tmp_path / "latency.png").exists()


def test_resume_keeps_the_scored_rows_and_asks_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragserve.config import Settings
    from ragserve.evaluation import conversations

    tasks = _write(
        tmp_path / "tasks.jsonl", [_row(task_id="a"), _row(task_id="b"), _row(task_id="c")]
    )
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    asked: list[str] = []

    def fake_run(settings: Any, todo: Any, corpus: Path, progress: bool, sink: Any) -> None:
        for task in todo:
            asked.append(task.task_id)
            sink(_result(task.label, task_id=task.task_id))

    monkeypatch.setattr(conversations, "_run", fake_run)
    report = tmp_path / "rep"
    report.mkdir()
    kept = json.dumps({**asdict_row(_result("answerable", task_id="a"))})
    failed = json.dumps({**asdict_row(_result("answerable", task_id="b", error="time-out"))})
    (report / "tasks.jsonl").write_text(kept + "\n" + failed + "\n" + '{"task_id": "c", "la')
    result = conversations.evaluate_conversations(
        Settings(), tasks, report=report, resume=True, progress=False
    )
    assert asked == ["b", "c"]  # the failed turn again, and the one cut off
    assert result["tasks"] == 3
    ids = [
        json.loads(line)["task_id"] for line in (report / "tasks.jsonl").read_text().splitlines()
    ]
    assert ids == ["a", "b", "c"]
    asked.clear()
    conversations.evaluate_conversations(Settings(), tasks, report=report, progress=False)
    assert asked == ["a", "b", "c"]  # without --resume every task is asked
    with pytest.raises(DatasetError, match="--resume needs --report"):
        conversations.evaluate_conversations(Settings(), tasks, resume=True)


def asdict_row(row: TaskResult) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(row)
