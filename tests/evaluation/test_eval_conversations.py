"""``ragserve eval conversations`` end to end: three real MTRAG-UN tasks through the real
pipeline (the suite's reader, see tests/conftest.py), over a small corpus holding their
reference passages among others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


def _pick(dataset: Path, out: Path) -> tuple[Path, dict[str, str]]:
    """An answerable follow-up (it has history), an unanswerable and an underspecified task,
    and a corpus of their reference passages plus 30 others."""
    wanted = {"ANSWERABLE": None, "UNANSWERABLE": None, "UNDERSPECIFIED": None}
    lines = (dataset / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        task = json.loads(line)
        label = task["answerability"][0]
        if label in wanted and wanted[label] is None and len(task["input"]) >= 3:
            wanted[label] = task
    chosen = [t for t in wanted.values() if t is not None]
    assert len(chosen) == 3
    refs = {c["document_id"] for t in chosen for c in t["contexts"]}
    corpus = (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    keep = [r for r in corpus if json.loads(r)["_id"] in refs] + [
        r for r in corpus[:30] if json.loads(r)["_id"] not in refs
    ]
    out.mkdir()
    (out / "tasks.jsonl").write_text("\n".join(json.dumps(t) for t in chosen) + "\n")
    (out / "corpus.jsonl").write_text("\n".join(keep) + "\n")
    return out / "tasks.jsonl", {t["task_id"]: t["answerability"][0].lower() for t in chosen}


@pytest.mark.slow
def test_eval_conversations_cli_end_to_end(
    tmp_path: Path, shared_datasets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragserve.cli.evaluate import app

    tasks, labels = _pick(shared_datasets / "mtrag-un-dev", tmp_path / "data")
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "idx"))
    monkeypatch.delenv("RAGSERVE_NO_PROGRESS", raising=False)  # --json must still show it
    report = tmp_path / "rep"
    result = CliRunner().invoke(
        app, ["conversations", "--tasks", str(tasks), "--json", "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["tasks"] == 3
    assert {"answerable", "unanswerable", "underspecified", "answerable+partial"} <= set(
        body["groups"]
    )
    measured = {(t["group"], t["metric"]): t["measured"] for t in body["targets"]}
    # Rates every run has (cited-is-reference and recall need an answer that cites).
    for key in [
        ("answerable+partial", "source_hit"),
        ("answerable+partial", "refused"),
        ("unanswerable", "refused"),
        ("underspecified", "clarify"),
        ("all", "ttft_p50_ms"),
        ("all", "total_p50_ms"),
    ]:
        assert measured[key] is not None, key
    rows = [json.loads(r) for r in (report / "tasks.jsonl").read_text().splitlines()]
    assert {r["task_id"]: r["label"] for r in rows} == labels
    for row in rows:
        assert 0 < row["ttft_ms"] <= row["total_ms"]
        assert row["standalone_query"] and row["kind"] in ("answer", "refusal", "clarify", "reply")
        assert isinstance(row["refused"], bool) and isinstance(row["answer"], str)
    answerable = next(r for r in rows if r["label"] == "answerable")
    # Its reference passage is one of 30-odd: retrieval through the conversation path finds it.
    assert answerable["hit"] is True, rows
    assert all(r["hit"] is None for r in rows if r["label"] == "unanswerable")  # no references
    assert {"report.md", "results.json", "tasks.jsonl", "rates.png", "latency.png"} <= {
        p.name for p in report.iterdir()
    }
    # The table goes to stderr under --json, beside the progress bars: stdout stays the JSON.
    assert "targets (issue 36)" in result.stderr and "conversations" in result.stderr
