"""The layer contracts of pyproject.toml hold: ``lint-imports`` (import-linter) exits 0.

A fast test as well as ``make lint``, so an upward import fails ``make test-fast`` too."""

from __future__ import annotations

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
