"""Every command in the README runs here, as the Python block does in test_readme_python.py.

The README's bash blocks and the commands in its results table are read from the file, so a
command added to the README is tested without editing this file, and a command this file cannot
classify fails the test.

- ``ragserve`` commands that work on an index run for real, in README order, through the real
  CLI app (in process, so the interpreter and imports are paid once), against a scratch data
  dir holding a few files of the sample corpus, with the extractive reader.
- ``ragserve serve`` runs for real in a child process (its port from ``RAGSERVE_PORT``) and
  the README's curl example, run by the real curl, asks it a question.
- ``ragserve mcp`` and ``ragserve eval ...`` over the shared datasets would take minutes to
  hours: each is checked against the real CLI (the subcommand's ``--help`` runs, and every
  option the README gives is one of its parameters). So are ``python benchmarks/...`` commands
  (their argparse ``--help``).
- ``make`` commands: the target exists in the Makefile.

The README's ``RAGSERVE_*`` names are settings (each read from the environment into the setting
it names), its ``ragserve.toml`` example loads, and the paths it names exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# A few files of the sample corpus: enough for the README's questions (timeouts.md answers
# them), small enough that ingesting and re-embedding them twice stays in seconds.
SAMPLE_FILES = ["timeouts.md", "proxies.md", "http2.md", "async.md", "ssl.md"]
# Too long to run in a test (a server, a stdio session, whole evaluation datasets): checked to
# parse against the real CLI instead. `serve` also runs for real, in test_readme_curl.
PARSE_ONLY = ("serve", "mcp", "eval")
# Paths the README names that are not in the repository by design.
NOT_IN_REPO = (
    "../shared/",  # the evaluation datasets, beside the checkout
    "/path/to/",  # placeholders in the MCP configuration
    "/models/",  # the ragserve.toml example's own GGUF
    ".venv/",  # made by `make run`
)


def _bash_commands() -> list[str]:
    """Each command line of the README's bash blocks, continuations joined, comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def _table_commands() -> list[str]:
    """The commands the results table gives to reproduce each row."""
    table = README.split("## How well it works", 1)[1].split("\n## ", 1)[0]
    return [
        m
        for m in re.findall(r"`([^`]+)`", table)
        if m.startswith(("ragserve ", "python ", "curl "))
    ]


ALL_COMMANDS = _bash_commands() + _table_commands()


def _ragserve(kind: str) -> list[list[str]]:
    out = []
    for command in ALL_COMMANDS:
        words = shlex.split(command)
        if words[0] == "ragserve":
            is_long = words[1] in PARSE_ONLY
            if (kind == "parse") == is_long:
                out.append(words[1:])
    return out


def test_every_readme_command_is_one_this_file_tests() -> None:
    known = ("ragserve", "curl", "make", "python")
    strays = [c for c in ALL_COMMANDS if shlex.split(c)[0] not in known]
    assert not strays, f"README commands no test here runs: {strays}"
    assert len(ALL_COMMANDS) >= 10, ALL_COMMANDS
    assert sum(c.startswith("curl ") for c in ALL_COMMANDS) == 1


def test_readme_make_targets_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = {m for m in re.findall(r"^([\w-]+):", makefile, re.M)}
    wanted = [shlex.split(c)[1] for c in ALL_COMMANDS if c.startswith("make ")]
    assert wanted[:2] == ["run", "test"], "the README must open with make run / make test"
    wanted += re.findall(r"`make ([\w-]+)`", README)
    assert set(wanted) <= targets, set(wanted) - targets


# --- the ragserve commands that run --------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> typing.Iterator[Path]:
    """A working directory with part of the sample corpus and an index beside it, shared by
    the CLI test and the curl test (which runs after it, on the index it left)."""
    tmp_path = tmp_path_factory.mktemp("readme")
    corpus = tmp_path / "samples" / "corpus" / "httpx"
    corpus.mkdir(parents=True)
    for name in SAMPLE_FILES:
        shutil.copy(REPO / "samples" / "corpus" / "httpx" / name, corpus / name)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(tmp_path)  # no ragserve.toml here: the defaults
        for var in [v for v in os.environ if v.startswith("RAGSERVE_")]:
            env.delenv(var)
        env.setenv("RAGSERVE_DATA_DIR", str(tmp_path / ".ragserve"))
        env.setenv("RAGSERVE_GENERATOR", "extractive")
        env.setenv("RAGSERVE_NO_PROGRESS", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("TRANSFORMERS_OFFLINE", "1")
        yield tmp_path


def test_readme_cli_commands_run(scratch: Path) -> None:
    from typer.testing import CliRunner

    from ragserve.cli.main import app

    commands = _ragserve("run")
    assert [c[0] for c in commands][:2] == ["ingest", "ingest"], commands
    runner = CliRunner()
    for args in commands:
        result = runner.invoke(app, args)
        shown = f"ragserve {shlex.join(args)} (exit {result.exit_code}):\n{result.output}"
        assert result.exit_code == 0, shown + repr(result.exception)
        out = result.output  # stdout and stderr: the ingest summary goes to stderr
        if args[0] == "ask" and "--json" in args:
            answer = json.loads(result.stdout)
            assert not answer["refused"], shown
            assert any("timeouts.md" in s["source"] for s in answer["sources"]), shown
        elif args[0] == "ask":
            assert "I couldn't find" not in out, shown
            assert "samples/corpus/httpx/" in out, shown
        elif args[0] == "list":
            assert "timeouts.md" in out, shown
        elif args[0] == "delete":
            gone = args[-1]
            listed = runner.invoke(app, ["list"]).output
            assert gone not in listed and "timeouts.md" in listed, listed
        elif args[0] == "ingest" and "--prune" not in args:
            assert f"{len(SAMPLE_FILES)} ingested" in out, shown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_curl(scratch: Path) -> None:
    """`ragserve serve` as written (port from the environment), then the README's curl."""
    from typer.testing import CliRunner

    from ragserve.cli.main import app

    if not (scratch / ".ragserve").exists():  # run alone, without the CLI test before it
        assert CliRunner().invoke(app, ["ingest", "samples/corpus/httpx"]).exit_code == 0
    port = _free_port()
    env = {**os.environ, "RAGSERVE_PORT": str(port)}
    serve = [c for c in ALL_COMMANDS if c.startswith("ragserve serve")]
    assert serve == ["ragserve serve"], serve
    ragserve = Path(sys.executable).with_name("ragserve")
    server = subprocess.Popen(
        [str(ragserve), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            ready = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/ready"],
                capture_output=True,
                text=True,
            )
            if ready.stdout == "200":
                break
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "ragserve serve did not get ready"
            time.sleep(0.5)
        (curl,) = [c for c in ALL_COMMANDS if c.startswith("curl ")]
        words = [w.replace("localhost:8000", f"127.0.0.1:{port}") for w in shlex.split(curl)]
        done = subprocess.run(words, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        body = json.loads(done.stdout)
        assert not body["refused"], body
        wanted = {"answer", "sources", "citations", "timings", "refused", "refusal_reason"}
        assert wanted <= body.keys(), body
        assert {"id", "source", "page", "section", "score", "text"} <= body["sources"][0].keys()
        # The routes and the widget script the README names are served.
        for route in ["/health", "/ready", "/metrics", "/docs", "/widget.js"]:
            got = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", base + route],
                capture_output=True,
                text=True,
            )
            assert got.stdout == "200", (route, got.stdout)
        assert '<script src="http://127.0.0.1:8000/widget.js"' in README
    finally:
        server.terminate()
        server.wait(timeout=60)


# --- the long ones: they parse against the real CLI ----------------------------------------


@pytest.mark.parametrize("args", _ragserve("parse"), ids=shlex.join)
def test_readme_long_commands_parse(args: list[str]) -> None:
    import typer.main
    from typer.testing import CliRunner

    from ragserve.cli.main import app

    result = CliRunner().invoke(app, [*args[: 2 if args[0] == "eval" else 1], "--help"])
    assert result.exit_code == 0, result.output
    command = typer.main.get_command(app)
    for word in args[: 2 if args[0] == "eval" else 1]:
        command = command.commands[word]  # type: ignore[attr-defined]
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    given = [w for w in args if w.startswith("--")]
    assert set(given) <= options, set(given) - options
    # Every option is followed by a value unless it is a flag.
    flags = {o for p in command.params if getattr(p, "is_flag", False) for o in p.opts}
    for i, word in enumerate(args):
        if word.startswith("--") and word not in flags:
            assert i + 1 < len(args) and not args[i + 1].startswith("--"), word


@pytest.mark.parametrize(
    "command", [c for c in ALL_COMMANDS if c.startswith("python ")], ids=lambda c: c
)
def test_readme_benchmark_commands_parse(command: str) -> None:
    words = shlex.split(command)
    script = REPO / words[1]
    assert script.is_file(), script
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for option in [w for w in words if w.startswith("--")]:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", done.stdout), option


# --- names, configuration and paths --------------------------------------------------------


def _flat_settings() -> dict[str, tuple[str, str]]:
    """RAGSERVE_<NAME> -> (group, field), by the README's rule: the setting's name in
    capitals, except the re-ranker's switch ([rerank] enabled is RAGSERVE_RERANK)."""
    from ragserve.config import Settings

    names = {}
    for group, field in Settings.model_fields.items():
        model = typing.cast("typing.Any", field.annotation)
        for name in model.model_fields:
            flat = "rerank" if (group, name) == ("rerank", "enabled") else name
            names[f"RAGSERVE_{flat.upper()}"] = (group, name)
    return names


def _probe(annotation: typing.Any, default: typing.Any) -> str:
    """A valid value for the setting other than its default, as the environment gives it."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return str(not default).lower()
    if annotation is int:
        return str(default + 1)
    if typing.get_origin(annotation) is typing.Literal:
        return next(str(v) for v in typing.get_args(annotation) if v != default)
    if typing.get_origin(annotation) is list:
        return '["https://probe.example"]'
    return "/tmp/probe-value"


def _plain(value: typing.Any) -> typing.Any:
    value = getattr(value, "get_secret_value", lambda: value)()
    return str(value) if isinstance(value, Path) else value


def test_readme_ragserve_names_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each RAGSERVE_* name in the README, set in the environment, sets the setting it names
    (to the README's own value where it gives one)."""
    from ragserve.config import Settings

    for var in [v for v in os.environ if v.startswith("RAGSERVE_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(REPO / "samples")  # no ragserve.toml here
    settings = _flat_settings()
    shown = dict(re.findall(r"(RAGSERVE_[A-Z0-9_]+)=('[^']*'|[^\s`]+)", README))
    names = set(re.findall(r"RAGSERVE_[A-Z0-9_]+", README)) - {"RAGSERVE_CONFIG"}
    unknown = sorted(n for n in names if n not in settings)
    assert not unknown, f"README names that are not settings: {unknown}"
    for name in sorted(names):
        group, field = settings[name]
        model_field = type(getattr(Settings(), group)).model_fields[field]
        value = shown.get(name)
        value = value.strip("'") if value else _probe(model_field.annotation, model_field.default)
        with monkeypatch.context() as env:
            env.setenv(name, value)
            got = _plain(getattr(getattr(Settings(), group), field))
        want = json.loads(value) if value.startswith(("[", "{")) else value
        assert str(got).lower() == str(want).lower() or got == want, (name, value, got)


def test_readme_config_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from ragserve.config import load_settings

    (example,) = re.findall(r"```toml\n(.*?)```", README, re.S)
    (tmp_path / "ragserve.toml").write_text(example)
    for var in [v for v in os.environ if v.startswith("RAGSERVE_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    data = tomllib.loads(example)
    assert settings.retrieval.top_k == data["retrieval"]["top_k"]
    assert settings.rerank.enabled is data["rerank"]["enabled"]
    assert settings.generation.generator == data["generation"]["generator"]
    assert settings.api.cors_origins == data["api"]["cors_origins"]
    # Precedence as the README states it: the environment over the file, keywords over both.
    monkeypatch.setenv("RAGSERVE_TOP_K", "7")
    assert load_settings().retrieval.top_k == 7
    assert load_settings(top_k=3).retrieval.top_k == 3


def test_readme_mcp_configuration_is_valid() -> None:
    (config,) = re.findall(r"```json\n(.*?)```", README, re.S)
    server = json.loads(config)["mcpServers"]["ragserve"]
    assert server["args"] == ["mcp"]
    assert set(server["env"]) <= set(_flat_settings())


def test_readme_paths_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    spans = [s for s in re.findall(r"`([\w./-]+)`", README) if "/" in s and not s.startswith("/")]
    words = [  # the commands' path arguments (not their questions, headers or URLs)
        w
        for c in ALL_COMMANDS
        if not c.startswith("curl ")
        for w in shlex.split(c)
        if re.fullmatch(r"[\w./-]+", w) and "/" in w
    ]
    missing = [
        p
        for p in {*links, *spans, *words}
        if not p.startswith(NOT_IN_REPO) and not p.startswith("http") and not (REPO / p).exists()
    ]
    assert not missing, f"paths the README names that do not exist: {sorted(missing)}"
    for anchor in re.findall(r"\]\((docs/[\w.-]+\.md)#([\w-]+)\)", README):
        doc = (REPO / anchor[0]).read_text().lower()
        assert re.search(rf"^#+ {anchor[1]}\b", doc, re.M), anchor
