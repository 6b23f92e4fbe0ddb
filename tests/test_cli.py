"""The ``ragserve`` CLI as a user runs it (subprocesses, real models, real index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGSERVE_DATA_DIR": str(data_dir), "RAGSERVE_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ragserve.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    import shutil

    work = tmp_path_factory.mktemp("cli")
    shutil.copytree(sample_corpus / "httpx", work / "docs")
    return work


def test_ingest_ask_list_delete(workdir: Path) -> None:
    data = workdir / "index"
    first = _run(["ingest", "docs", "--json"], data, workdir)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["ingested"] == 10 and summary["failed"] == 0 and summary["chunks"] > 10

    again = json.loads(_run(["ingest", "docs", "--json"], data, workdir).stdout)
    assert again["unchanged"] == 10 and again["ingested"] == 0

    ask = _run(["ask", "How do I set a timeout on a client?", "--json"], data, workdir)
    assert ask.returncode == 0, ask.stderr
    body = json.loads(ask.stdout)
    assert body["answer"] and body["sources"] and "timings" in body

    plain = _run(["ask", "How do I set a timeout on a client?"], data, workdir)
    assert "[1]" in plain.stdout and "timeouts.md" in plain.stdout

    listed = json.loads(_run(["list", "--json"], data, workdir).stdout)
    assert len(listed) == 10
    assert _run(["delete", "docs/ssl.md"], data, workdir).returncode == 0
    assert len(json.loads(_run(["list", "--json"], data, workdir).stdout)) == 9
    assert _run(["delete", "docs/nope.md"], data, workdir).returncode == 1


def test_bad_input_gives_messages_and_non_zero_exit(workdir: Path) -> None:
    data = workdir / "index2"
    (workdir / "weird.xyz").write_text("hello")
    r = _run(["ingest", "weird.xyz"], data, workdir)
    assert r.returncode != 0 and "unsupported file type" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run(["ask", "   "], data, workdir)
    assert r.returncode == 2 and "error: The query is empty" in r.stderr
    r = _run(["ingest", "missing-dir"], data, workdir)
    assert r.returncode != 0 and "no such file" in r.stderr


def test_help_for_every_command(workdir: Path) -> None:
    for cmd in (
        ["--help"],
        ["ingest", "--help"],
        ["ask", "--help"],
        ["serve", "--help"],
        ["eval", "retrieval", "--help"],
        ["eval", "answers", "--help"],
    ):
        r = _run(cmd, workdir / "i", workdir)
        assert r.returncode == 0 and "Usage" in r.stdout, cmd
