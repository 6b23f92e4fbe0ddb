"""Every name users' deployments use today keeps working (issue 35).

Two fixtures, taken from commit 4dda4bd before the README and config were rewritten:
``data/readme_settings.txt`` holds each ``RAGSERVE_*`` name the README mentioned, and
``data/settings_4dda4bd.txt`` each setting (group, field, flat name) that config defined. Each
is set here, with a valid value other than its default, through every door it had: the
environment, flat and grouped ``ragserve.toml`` keys, flat and grouped keywords and
:meth:`Settings.replace`, and must arrive in the same place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from ragserve.config import _FLAT, _GROUPS, Settings, load_settings

DATA = Path(__file__).parent / "data"

# RAGSERVE_* variables that are not settings: read by other code, left alone by Settings.
NON_SETTINGS = {
    "RAGSERVE_CONFIG": "the path of ragserve.toml (config.config_path)",
    "RAGSERVE_NO_PROGRESS": "hides progress bars (evaluation)",
    "RAGSERVE_DATASETS": "where evaluation datasets are cached",
}


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


README_NAMES = _lines("readme_settings.txt")
OLD_SETTINGS = [tuple(line.split()) for line in _lines("settings_4dda4bd.txt")]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith("RAGSERVE_")]:
        monkeypatch.delenv(name)
    return tmp_path


# --- a valid value other than the default, for any field --------------------------------


def _bounds(info: FieldInfo) -> tuple[float, float]:
    low, high = -1e9, 1e9
    for m in info.metadata:
        if isinstance(m, at.Ge | at.Gt):
            low = float(m.ge if isinstance(m, at.Ge) else m.gt)
        if isinstance(m, at.Le | at.Lt):
            high = float(m.le if isinstance(m, at.Le) else m.lt)
    return low, high


def _sample(group: str, field: str) -> Any:
    info = _GROUPS[group].model_fields[field]
    kind = info.annotation
    if get_origin(kind) in (Union, UnionType):  # X | None: a value of X
        kind = next(a for a in get_args(kind) if a is not type(None))
    default = info.get_default(call_default_factory=True)
    low, high = _bounds(info)
    if kind is bool:
        return not default
    if get_origin(kind) is Literal:
        return next(c for c in get_args(kind) if c != default)
    if kind in (int, float):
        base = default if default is not None else max(low, 1)
        step = 1 if kind is int else (0.01 if high - low <= 2 else 0.5)
        return kind(base + step if base + step < high else base - step)
    if get_origin(kind) is list:
        return ["http://a.example"]
    if kind is Path:
        return Path("elsewhere")
    if kind is SecretStr:
        return "s3cret-value"
    assert kind is str, f"no sample for {group}.{field}: {info.annotation}"
    return f"{default}x" if group != "index" else "other"


def _read(settings: Settings, group: str, field: str) -> Any:
    value = getattr(getattr(settings, group), field)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, list) else str(value)


def _toml_text(value: Any) -> str:
    if isinstance(value, Path):
        return json.dumps(str(value))
    return _env_text(value) if isinstance(value, bool | int | float) else json.dumps(value)


def _toml(text: str) -> None:
    Path("ragserve.toml").write_text(text, encoding="utf-8")


# --- the README's names -----------------------------------------------------------------


def test_the_fixture_holds_the_readme_names() -> None:
    assert len(README_NAMES) > 40 and sorted(set(README_NAMES)) == README_NAMES
    assert "RAGSERVE_TOP_K" in README_NAMES and "RAGSERVE_RERANK" in README_NAMES


@pytest.mark.parametrize("var", README_NAMES)
def test_each_readme_variable_is_still_accepted(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if var in NON_SETTINGS:
        pytest.skip(f"{var} is not a setting: {NON_SETTINGS[var]}")
    flat = var.removeprefix("RAGSERVE_").lower()
    assert flat in _FLAT, f"{var} no longer maps to a setting"
    group, field = _FLAT[flat]
    value = _sample(group, field)
    monkeypatch.setenv(var, _env_text(value))
    assert _read(load_settings(), group, field) == value


@pytest.mark.parametrize("var", sorted(NON_SETTINGS))
def test_variables_that_are_not_settings_are_left_alone(
    var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert var.removeprefix("RAGSERVE_").lower() not in _FLAT
    if var == "RAGSERVE_CONFIG":
        Path("elsewhere.toml").write_text("top_k = 7\n", encoding="utf-8")
        monkeypatch.setenv(var, "elsewhere.toml")
        assert load_settings().retrieval.top_k == 7
    else:
        monkeypatch.setenv(var, "1")
        assert load_settings() == Settings()


# --- every setting of 4dda4bd, through every door ---------------------------------------


def test_the_fixture_holds_every_old_setting() -> None:
    assert len(OLD_SETTINGS) >= 90
    assert ("rerank", "enabled", "rerank") in OLD_SETTINGS
    assert ("retrieval", "top_k", "top_k") in OLD_SETTINGS


@pytest.mark.parametrize(("group", "field", "flat"), OLD_SETTINGS)
def test_each_old_setting_keeps_every_name(
    group: str, field: str, flat: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _FLAT.get(flat) == (group, field), f"{flat} moved or vanished"
    value = _sample(group, field)
    expected = _read(Settings(), group, field)
    assert value != expected, "the sample must differ from the default to prove anything"
    by_door = {
        "flat keyword": Settings(**{flat: value}),
        "grouped keyword": Settings(**{group: {field: value}}),
        "flat name in its group": Settings(**{group: {flat: value}}),
        "replace, flat": Settings().replace(**{flat: value}),
        "replace, grouped": Settings().replace(**{group: {field: value}}),
    }
    _toml(f"{flat} = {_toml_text(value)}\n")
    by_door["flat toml key"] = load_settings()
    _toml(f"[{group}]\n{field} = {_toml_text(value)}\n")
    by_door["grouped toml key"] = load_settings()
    Path("ragserve.toml").unlink()
    monkeypatch.setenv(f"RAGSERVE_{flat.upper()}", _env_text(value))
    by_door["environment"] = load_settings()
    for door, settings in by_door.items():
        assert _read(settings, group, field) == value, door


def test_keyword_and_grouped_forms_are_equal() -> None:
    assert Settings(top_k=3) == Settings(retrieval={"top_k": 3})
    assert Settings(rerank=False) == Settings(rerank={"enabled": False})


def test_no_current_setting_is_missing_from_the_old_names_unless_new() -> None:
    """A setting added since 4dda4bd is new, not a rename: an old name that vanished would
    show up in the test above; this lists the new ones so a rename cannot hide as one."""
    old = {flat for _, _, flat in OLD_SETTINGS}
    new = set(_FLAT) - old
    conversation_gate = {
        "conversation_gate",
        "conversation_judge_threshold",
        "conversation_rerank_threshold",
        "conversation_support_threshold",
        "conversation_min_support",
    }
    added = {"history_budget", "clarify", "rate_limit_storage", "resolve_pronouns"}
    added |= {"context_pick_floor"}
    assert new <= added | conversation_gate, sorted(new)
