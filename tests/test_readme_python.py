"""The README's "Use it from Python" block, run as written (in a scratch directory)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Use it from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python section lost its code block"
    return match.group(1)


def test_readme_python_example_runs_and_cites_the_right_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_python_block(), "README.md", "exec"), {})
    printed = out.getvalue()
    assert "timeouts.md" in printed, printed
    assert (tmp_path / ".ragserve-py").is_dir()
