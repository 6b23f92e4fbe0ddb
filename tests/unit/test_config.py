"""Settings validation: a strict ragserve.toml, bounded values, one-paragraph errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from ragserve.cli.main import app as cli
from ragserve.config import _FLAT, _GROUPS, RerankSettings, Settings, SettingsError, load_settings


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


def test_flat_keywords_go_to_their_groups() -> None:
    s = Settings(top_k=3, generator="extractive", rerank=True, port=9001, data_dir="x")
    assert s.retrieval.top_k == 3 and s.generation.generator == "extractive"
    assert s.rerank.enabled is True and s.api.port == 9001 and s.index_dir == Path("x/default")


def test_grouped_keywords_work_too_and_keep_the_group_defaults() -> None:
    s = Settings(retrieval={"top_k": 4}, rerank=RerankSettings(enabled=True), fusion="rrf")
    assert (s.retrieval.top_k, s.retrieval.fusion, s.retrieval.rrf_k) == (4, "rrf", 60)
    assert s.rerank.enabled is True
    assert Settings(rerank={"rerank": True}).rerank.enabled is True  # a flat name in its group


def test_a_setting_given_flat_and_grouped_is_an_error() -> None:
    with pytest.raises(SettingsError, match=r"'top_k' is set twice \(.*retrieval\.top_k"):
        Settings(top_k=3, retrieval={"top_k": 4})


def test_an_unknown_keyword_names_the_closest_setting() -> None:
    with pytest.raises(
        SettingsError, match=r"'top_kk' is not a ragserve setting\. Did you mean 'top_k'"
    ):
        load_settings(top_kk=3)
    with pytest.raises(SettingsError, match=r"'top_kk' in 'retrieval'.*Did you mean 'top_k'"):
        Settings(retrieval={"top_kk": 3})


def test_each_setting_has_one_flat_name() -> None:
    fields = {(g, f) for g, model in _GROUPS.items() for f in model.model_fields}
    assert set(_FLAT.values()) == fields and len(_FLAT) == len(fields)
    assert _FLAT["rerank"] == ("rerank", "enabled")


def test_environment_variables_keep_their_flat_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_TOP_K", "7")
    monkeypatch.setenv("RAGSERVE_RERANK", "true")
    monkeypatch.setenv("RAGSERVE_DATA_DIR", "/srv/idx")
    monkeypatch.setenv("RAGSERVE_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("ragserve_generator", "openai")  # any case, as before
    s = load_settings()
    assert (s.retrieval.top_k, s.rerank.enabled, s.index.data_dir) == (7, True, Path("/srv/idx"))
    assert s.api.cors_origins == ["https://a.example"]
    assert s.generation.generator == "openai"


def test_a_list_variable_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_CORS_ORIGINS", "https://a.example")
    with pytest.raises(SettingsError, match="RAGSERVE_CORS_ORIGINS is not JSON"):
        load_settings()


def test_precedence_is_per_setting_not_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    _toml('[retrieval]\ntop_k = 9\nfusion = "rrf"\nrrf_k = 10\n')
    monkeypatch.setenv("RAGSERVE_FUSION", "convex")
    monkeypatch.setenv("RAGSERVE_RRF_K", "20")
    s = load_settings(top_k=2, retrieval={"rrf_k": 30})
    assert (s.retrieval.top_k, s.retrieval.fusion, s.retrieval.rrf_k) == (2, "convex", 30)


def test_a_grouped_file_is_read() -> None:
    _toml(
        'generator = "extractive"\n'  # flat keys and tables in one file
        "[retrieval]\ntop_k = 3\n"
        "[rerank]\nenabled = true\nrerank_candidates = 30\n"
        "[api]\nport = 9100\n"
    )
    s = load_settings()
    assert (s.retrieval.top_k, s.rerank.enabled, s.rerank.rerank_candidates) == (3, True, 30)
    assert (s.api.port, s.generation.generator) == (9100, "extractive")


def test_a_flat_file_is_read() -> None:
    _toml('rerank = true\ntop_k = 3\ndata_dir = "d"\nadmin_api_key = "k"\n')
    s = load_settings()
    assert (s.rerank.enabled, s.retrieval.top_k, s.index.data_dir) == (True, 3, Path("d"))
    assert s.api.admin_api_key is not None and s.api.admin_api_key.get_secret_value() == "k"


def test_a_misspelled_key_in_a_table_names_the_closest_key_in_it() -> None:
    _toml("[retrieval]\ntop_kk = 3\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = err.value.message
    assert "ragserve.toml" in message and "'top_kk' in [retrieval]" in message
    assert "Did you mean 'top_k'?" in message


def test_a_key_in_the_wrong_table_names_its_table() -> None:
    _toml("[api]\ntop_k = 3\n")
    with pytest.raises(
        SettingsError, match=r"'top_k' is not in \[api\]; it belongs in \[retrieval\]"
    ):
        load_settings()


def test_a_setting_set_twice_in_the_file_is_an_error() -> None:
    _toml("top_k = 3\n[retrieval]\ntop_k = 4\n")
    with pytest.raises(
        SettingsError, match=r"'top_k' is set twice \(top_k and \[retrieval\] top_k\)"
    ):
        load_settings()


def test_an_out_of_range_value_in_a_table_names_the_variable_and_the_file() -> None:
    _toml("[api]\nport = 70000\n")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "api.port = 70000" in err.value.message
    assert "RAGSERVE_PORT" in (err.value.hint or "") and "ragserve.toml" in (err.value.hint or "")


def test_replace_routes_flat_names_and_validates() -> None:
    s = Settings()
    t = s.replace(top_k=3, store="postgres", rerank=False, generation={"min_support": 0.0})
    assert (t.retrieval.top_k, t.index.store, t.rerank.enabled) == (3, "postgres", False)
    assert t.generation.min_support == 0.0 and t.retrieval.fusion == s.retrieval.fusion
    assert (s.retrieval.top_k, s.index.store, s.rerank.enabled) == (5, "chroma", True)
    with pytest.raises(ValidationError, match="top_k"):
        s.replace(top_k=0)
    with pytest.raises(SettingsError, match="Did you mean 'overfetch'"):
        s.replace(overfech=1)


def test_the_readme_example_file_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```toml\n# ragserve.toml\n(.*?)```", readme, re.S)
    assert match, "the README lost its ragserve.toml example"
    _toml(match.group(1))
    s = load_settings()
    assert s.rerank.enabled and s.generation.generator == "llama" and s.api.admin_api_key


@pytest.mark.parametrize("command", [["serve"], ["ask", "q"], ["ingest", "docs"], ["list"]])
def test_commands_stop_at_start_with_the_message_and_no_traceback(command: list[str]) -> None:
    _toml("prot = 9000\n")
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    assert "'prot' is not a ragserve setting" in result.output
    assert "Did you mean 'port'?" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), "handled"


# --- issue 35: defaults in config, nothing overridden silently, errors say where ------------


def test_the_thresholds_default_to_their_calibrated_values_with_bounds() -> None:
    from ragserve.grounding.answerability import ANSWERABLE_THRESHOLD

    g = Settings().generation
    assert (g.refusal_threshold, g.answerability_threshold) == (0.1, 0.08)
    assert g.answerability_threshold == ANSWERABLE_THRESHOLD  # the module's copy agrees
    # None was "the calibrated default" and still means it (Python callers passed it).
    s = Settings(refusal_threshold=None, answerability_threshold=None)
    assert (s.generation.refusal_threshold, s.generation.answerability_threshold) == (0.1, 0.08)
    assert Settings(refusal_threshold=0.0).generation.refusal_threshold == 0.0  # gate off
    for name in ("refusal_threshold", "answerability_threshold"):
        with pytest.raises(SettingsError, match=rf"generation\.{name} = 1\.5"):
            load_settings(**{name: 1.5})
        with pytest.raises(SettingsError, match=rf"generation\.{name} = -0\.1"):
            load_settings(**{name: -0.1})


def test_components_built_by_hand_default_to_the_configured_values() -> None:
    """A constructor default that disagreed with config (max_tokens 256 against 160,
    feedback_docs 0 against 2) made a hand-built component behave unlike the served one."""
    import inspect

    from ragserve.config import setting_default
    from ragserve.generation.llama import LlamaCppGenerator
    from ragserve.retrieval.hybrid import HybridRetriever

    same = {
        LlamaCppGenerator: {
            "model_path": "llm_model_path",
            "n_ctx": "llm_context_window",
            "n_threads": "llm_threads",
            "temperature": "llm_temperature",
            "max_tokens": "llm_max_tokens",
            "prompt_style": "llm_prompt_style",
            "completion_sources": "llm_completion_sources",
            "timeout_s": "llm_timeout_s",
            "max_waiting": "llm_max_waiting",
        },
        HybridRetriever: {
            "fusion": "fusion",
            "alpha": "fusion_alpha",
            "depth": "fusion_depth",
            "overfetch": "overfetch",
            "rrf_k": "rrf_k",
            "feedback_docs": "dense_feedback_docs",
            "feedback_weight": "dense_feedback_weight",
        },
    }
    for component, params in same.items():
        signature = inspect.signature(component.__init__)
        for param, setting in params.items():
            default = signature.parameters[param].default
            assert default == setting_default(setting), (component.__name__, param)
    assert setting_default("llm_max_tokens") == 160
    assert setting_default("dense_feedback_docs") == 2


@pytest.mark.parametrize(("overlap", "ok"), [(256, True), (257, False)])
def test_a_chunk_overlap_over_half_a_chunk_is_refused_not_cut(overlap: int, ok: bool) -> None:
    # The chunkers would cut it to half a chunk without a word; config says so at start.
    if ok:
        assert load_settings(chunk_size=512, chunk_overlap=overlap).ingest.chunk_overlap == 256
        return
    with pytest.raises(SettingsError, match=r"chunk_overlap \(257\) must be at most half"):
        load_settings(chunk_size=512, chunk_overlap=overlap)


def test_an_error_names_where_the_bad_value_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    path = _toml("port = 70000\n").absolute()
    monkeypatch.setenv("RAGSERVE_WORKERS", "0")
    with pytest.raises(SettingsError) as err:
        load_settings(top_k=0)
    message = err.value.message
    assert f"api.port = 70000: Input should be less than or equal to 65535 (in {path})" in message
    assert "api.workers = 0" in message and "(environment variable RAGSERVE_WORKERS)" in message
    assert "retrieval.top_k = 0" in message and "(keyword argument or command option)" in message


def test_the_environment_wins_in_the_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _toml("port = 9000\n")  # valid, but overridden by the environment's bad value
    monkeypatch.setenv("RAGSERVE_PORT", "0")
    with pytest.raises(
        SettingsError, match=r"api\.port = 0: .*\(environment variable RAGSERVE_PORT\)"
    ):
        load_settings()


def test_a_misspelled_environment_variable_is_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RAGSERVE_TOPK", "3")
    monkeypatch.setenv("RAGSERVE_NO_PROGRESS", "1")  # not a setting, and not a misspelling
    monkeypatch.setenv("RAGSERVE_SOMETHING_ELSE", "x")  # nothing like a setting: silence
    with caplog.at_level("WARNING", logger="ragserve.config"):
        assert load_settings().retrieval.top_k == 5
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "environment variable RAGSERVE_TOPK is not a ragserve setting (ignored); "
        "did you mean RAGSERVE_TOP_K?"
    ]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("context_budget", "budget_context"),
        ("history_turns", "max_history_turns"),
        ("max_file_bytes", "max_upload_bytes"),
    ],
)
def test_near_duplicate_settings_each_say_how_they_differ(a: str, b: str) -> None:
    # Two settings, two meanings (see each description); each names the other.
    for this, other in ((a, b), (b, a)):
        group, field = _FLAT[this]
        assert other in (_GROUPS[group].model_fields[field].description or ""), this


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 9000\n", "'prot' is not a ragserve setting. Did you mean 'port'?"),
        ("port = 70000\n", "api.port = 70000"),
        ("port: 8000\n", "is not valid TOML at line 1"),
    ],
)
def test_ragserve_list_stops_with_a_message_naming_key_and_file(text: str, fragment: str) -> None:
    path = _toml(text).absolute()
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # the message may wrap
    assert fragment in output and str(path) in "".join(result.output.split())
    assert "Traceback" not in result.output


def test_keywords_and_the_file_share_one_router() -> None:
    # A setting in the wrong group is named with its group, by keyword as in the file.
    with pytest.raises(SettingsError, match=r"'top_k' is not in 'api'; it belongs in 'retrieval'"):
        Settings(api={"top_k": 3})
    # A group given as a model keeps it; a flat name beside it is merged in, not lost...
    s = Settings(rerank=RerankSettings(rerank_candidates=9), rerank_alpha=0.3)
    assert (s.rerank.rerank_candidates, s.rerank.rerank_alpha, s.rerank.enabled) == (9, 0.3, True)
    # ...unless both give the same setting.
    with pytest.raises(SettingsError, match=r"'rerank_alpha' is set twice"):
        Settings(rerank=RerankSettings(rerank_alpha=0.2), rerank_alpha=0.3)
    # A field and its flat name in one group are the same setting.
    with pytest.raises(SettingsError, match=r"'rerank' is set twice"):
        Settings(rerank={"enabled": True, "rerank": False})
