"""Settings validation: a strict ragserve.toml, bounded values, one-paragraph errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragserve.cli import app as cli
from ragserve.config import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test in its own directory, with no RAGSERVE_* from the caller's shell."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("RAGSERVE_")]:
        monkeypatch.delenv(name)
    return tmp_path


def _toml(text: str) -> Path:
    path = Path("ragserve.toml")
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_file_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    _toml('port = 9000\ngenerator = "llama"\ntop_k = 7\n')
    monkeypatch.setenv("RAGSERVE_TOP_K", "3")
    s = load_settings()
    assert (s.api.port, s.generation.generator, s.retrieval.top_k) == (9000, "llama", 3)


def test_a_misspelled_key_names_the_key_the_file_and_the_closest_setting() -> None:
    _toml("prot = 9000\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = err.value.message
    assert "'prot'" in message and "ragserve.toml" in message and "'port'" in message


def test_a_table_is_an_unknown_key_too() -> None:
    _toml("[server]\nport = 9000\n")
    with pytest.raises(SettingsError, match="'server' is not a ragserve setting"):
        load_settings()


def test_a_file_that_is_not_toml_names_the_file_and_line() -> None:
    _toml('data_dir = ".ragserve"\nport: 8000\n')
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "ragserve.toml is not valid TOML at line 2" in err.value.message


def test_a_binary_file_is_not_toml_either() -> None:
    Path("ragserve.toml").write_bytes(b"\xff\xfe\x00port")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings()


def test_ragserve_config_must_name_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_CONFIG", "missing.toml")
    with pytest.raises(SettingsError, match=r"RAGSERVE_CONFIG names missing\.toml"):
        load_settings()


def test_ragserve_config_points_at_another_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("other.toml").write_text("top_k = 9\n")
    monkeypatch.setenv("RAGSERVE_CONFIG", "other.toml")
    assert load_settings().retrieval.top_k == 9


def test_environment_variables_that_are_not_settings_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAGSERVE_NO_PROGRESS", "1")
    monkeypatch.setenv("RAGSERVE_SOMETHING_ELSE", "x")
    monkeypatch.setenv("RAGSERVE_PORT", "8123")
    assert load_settings().api.port == 8123


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("toml:port = 70000", "port = 70000"),
        ("env:RAGSERVE_PORT=0", "port = 0"),
        ("toml:budget_context = -5", "budget_context = -5"),
        ("env:RAGSERVE_WORKERS=0", "workers = 0"),
        ("toml:top_k = 0", "top_k = 0"),
        ("toml:hnsw_m = 500", "hnsw_m = 500"),
        ("toml:max_upload_bytes = 10", "max_upload_bytes = 10"),
    ],
)
def test_out_of_range_values_are_refused(
    source: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, _, text = source.partition(":")
    if kind == "toml":
        _toml(text + "\n")
    else:
        name, _, value = text.partition("=")
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert fragment in err.value.message
    assert "\n" not in err.value.message, "one paragraph"
    name = fragment.split(" ")[0].upper()
    assert f"RAGSERVE_{name}" in (err.value.hint or "")


def test_hnsw_build_depth_must_cover_its_links() -> None:
    with pytest.raises(SettingsError, match="at least twice hnsw_m"):
        load_settings(hnsw_m=64, hnsw_ef_construction=100)


def test_a_secret_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(admin_api_key=918273645)
    assert "admin_api_key" in err.value.message and "918273645" not in err.value.message


def test_defaults_are_valid() -> None:
    assert Settings().api.port == 8000


@pytest.mark.parametrize("command", [["serve"], ["ask", "q"], ["ingest", "docs"], ["list"]])
def test_commands_stop_at_start_with_the_message_and_no_traceback(command: list[str]) -> None:
    _toml("prot = 9000\n")
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    assert "'prot' is not a ragserve setting" in result.output
    assert "Did you mean 'port'?" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), "handled"
