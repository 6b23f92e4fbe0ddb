"""The throwaway PostgreSQL server of the test suite (``tests/support/pg_server.py``), for the
benchmarks that start one. It lives under tests/ because it is a harness (it may ``useradd``),
not part of the installed package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["LocalPostgres"]

_PATH = Path(__file__).resolve().parents[1] / "tests" / "support" / "pg_server.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("ragserve_tests_pg_server", _PATH)
    assert spec is not None and spec.loader is not None, _PATH
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LocalPostgres


LocalPostgres = _load()
