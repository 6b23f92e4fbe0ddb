"""The layer contracts of pyproject.toml hold: ``lint-imports`` (import-linter) exits 0.

A fast test as well as ``make lint``, so an upward import fails ``make test-fast`` too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_pass() -> None:
    # Beside the running interpreter: the venv's console script, not whatever is on PATH.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the fast-tier guard (tests/conftest.py) -------------------------------------------------

_TINY_TESTS = """
import sys
import types

import pytest


@pytest.mark.fast
def test_imports_torch():
    import torch  # noqa: F401


@pytest.mark.fast
def test_loads_a_runtime_past_the_hook():
    # What a runtime loaded by other means looks like (a real module, with a file): the
    # sys.modules check that every session runs catches it.
    module = types.ModuleType("openvino")
    module.__file__ = "/site-packages/openvino/__init__.py"
    sys.modules["openvino"] = module


@pytest.mark.fast
def test_pure():
    assert 1 + 1 == 2


@pytest.mark.fast
def test_fake_runtime(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    import llama_cpp  # noqa: F401
"""

EXPECTED = {
    "test_imports_torch": "FAILED",
    "test_loads_a_runtime_past_the_hook": "FAILED",
    "test_pure": "PASSED",
    "test_fake_runtime": "PASSED",
}


def _run_guarded(tmp_path: Path) -> tuple[dict[str, str], str]:
    """``pytest -m fast`` on the tiny file above with the suite's conftest as a plugin: each
    test's outcome by name, and the report."""
    (tmp_path / "test_tiny.py").write_text(_TINY_TESTS)
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [
            *command,
            "-q",
            "-rA",
            "-o",
            "markers=fast",
            "--rootdir",
            ".",
            "-m",
            "fast",
            "test_tiny.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = done.stdout + done.stderr
    outcomes = {}
    for line in report.splitlines():
        outcome, _, rest = line.partition(" test_tiny.py::")
        if outcome in ("PASSED", "FAILED") and rest:
            outcomes[rest.split(" ")[0]] = outcome
    return outcomes, report


def test_a_fast_test_that_imports_a_model_runtime_fails(tmp_path: Path) -> None:
    # `-m fast` blocks the import itself, so torch never loads and this takes no torch time;
    # a runtime that got into sys.modules some other way fails the test that loaded it.
    outcomes, report = _run_guarded(tmp_path)
    assert outcomes == EXPECTED, report
    assert "torch imported in a `-m fast` session" in report
    assert "fast test imported openvino" in report
