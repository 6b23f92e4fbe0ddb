"""The CLI's shared parts: typed errors become messages and exit codes; every sub-app is there."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from ragserve.cli.main import app
from ragserve.cli.support import friendly_errors
from ragserve.errors import BadRequestError, StoreError


@pytest.mark.parametrize(
    ("error", "code"), [(BadRequestError("bad", hint="fix"), 2), (StoreError("down"), 1)]
)
def test_typed_errors_exit_with_message_and_hint(error: Exception, code: int) -> None:
    probe = typer.Typer()

    @probe.command()
    @friendly_errors
    def fail() -> None:
        raise error

    result = CliRunner().invoke(probe, [])
    assert result.exit_code == code
    assert f"error: {error.message}" in result.output  # type: ignore[attr-defined]
    assert ("hint: fix" in result.output) == (code == 2)


def test_sub_apps_are_registered() -> None:
    # They were once imported behind an ImportError guard, so a broken one vanished silently.
    out = CliRunner().invoke(app, ["--help"]).output
    assert "eval" in out and "migrate" in out
    assert "retrieval" in CliRunner().invoke(app, ["eval", "--help"]).output
