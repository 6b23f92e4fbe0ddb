"""Smoke tests for the scripts under benchmarks/ and research/: no model loads, tiny data.

A refactor that renames something a benchmark uses fails here, not months later when someone
runs the benchmark: every ``ragserve`` name a script imports (at the top or inside a function)
must resolve and be public, every ``settings.<group>.<field>`` it reads must exist, each
user-facing benchmark's argument parser builds (``--help``), and its pure parts run on
hand-made data, with a fake embedder where a stage needs one. Research scripts get the static
checks only: they are records of a decision, run by hand.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ragserve.config import Settings

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RESEARCH = REPO / "research"
# The user-facing benchmarks (cited in the README, or bench_* scripts users run). A new script
# under benchmarks/ must be added here, with a smoke test below.
USER_FACING = (
    "bench_chat",
    "bench_ingest",
    "bench_mcp",
    "bench_pdf_text",
    "bench_peers",
    "bench_pgvector",
    "bench_rerank",
    "bench_retrieval",
    "compare_stores",
    "load_chat",
)
# Not benchmarks: a harness the PostgreSQL benchmarks share, and a question set in progress.
HELPERS = ("pg_harness", "conversation_queries")
SCRIPTS = [BENCHMARKS / f"{name}.py" for name in USER_FACING] + sorted(RESEARCH.glob("*.py"))


def _script_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def load_script(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import a script as a module, its folder on sys.path as when it runs (siblings import
    each other by bare name)."""
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_smoke_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# --- static checks over every script ----------------------------------------------------------


def test_every_script_under_benchmarks_is_a_listed_benchmark_or_helper() -> None:
    found = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert found - set(HELPERS) == set(USER_FACING), (
        "a script under benchmarks/ without a smoke test (list it in USER_FACING and add one), "
        "or a calibration study that belongs under research/"
    )


def _ragserve_imports(tree: ast.Module) -> Iterator[tuple[str, str | None]]:
    """(module, name) for every ``from ragserve... import name`` and ``import ragserve...``,
    wherever it sits (benchmarks import heavy things inside functions)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ragserve"):
            for alias in node.names:
                yield node.module or "", alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ragserve"):
                    yield alias.name, None


@pytest.mark.parametrize("path", SCRIPTS, ids=_script_id)
def test_every_ragserve_name_a_script_imports_resolves_and_is_public(path: Path) -> None:
    for module_name, name in _ragserve_imports(_tree(path)):
        module = importlib.import_module(module_name)
        if name is None:
            continue
        assert not name.startswith("_"), f"{path.name} imports the private {module_name}.{name}"
        if not hasattr(module, name):  # a submodule: from ragserve.x import y
            importlib.import_module(f"{module_name}.{name}")


@pytest.mark.parametrize("path", SCRIPTS, ids=_script_id)
def test_no_script_reaches_into_a_private_attribute(path: Path) -> None:
    private = [
        f"{path.name}:{node.lineno} .{node.attr}"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert private == []


def _root(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _settings_groups() -> dict[str, Any]:
    settings = Settings()
    return {
        name: getattr(settings, name)
        for name in type(settings).model_fields
        if hasattr(type(getattr(settings, name)), "model_fields")
    }


@pytest.mark.parametrize("path", SCRIPTS, ids=_script_id)
def test_every_settings_field_a_script_reads_exists(path: Path) -> None:
    groups = _settings_groups()
    missing = [
        f"{path.name}:{node.lineno} {node.value.attr}.{node.attr}"
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr in groups
        and not hasattr(groups[node.value.attr], node.attr)
        and _root(node) != "ragserve"  # a module path: ragserve.rerank.cross_encoder
        # ``x.ingest.ingest_documents(...)`` is a method of something else named like a group.
        and not node.attr.startswith(("ingest_", "open"))
    ]
    assert missing == []


@pytest.mark.parametrize("path", sorted(RESEARCH.glob("*.py")), ids=_script_id)
def test_research_script_imports(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_script(path, monkeypatch).__doc__, f"{path.name}: say what it decided"


@pytest.mark.parametrize("name", USER_FACING)
def test_benchmark_help_parses(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_script(BENCHMARKS / f"{name}.py", monkeypatch)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as done:
        result = module.main()
        if asyncio.iscoroutine(result):  # load_chat's main is async
            asyncio.run(result)
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


# --- fakes at the model boundary ---------------------------------------------------------------


class WordTokenizer:
    """Hugging Face's fast-tokenizer call as the chunker uses it: one token per word."""

    name_or_path = ""

    def __call__(self, text: str, **_: Any) -> dict[str, list[tuple[int, int]]]:
        return {"offset_mapping": [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]}


class HashEmbedder:
    """Deterministic unit vectors from a hash of the text: the Embedder surface, no model."""

    fingerprint = "smoke-hash-8"
    runtime = "fake"
    dimension = 8
    max_tokens = 256

    def __init__(self, *_: Any, **__: Any) -> None:
        self.tokenizer = WordTokenizer()

    def warm_up(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raw = [list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts]
        vectors = np.asarray(raw, dtype=np.float32).reshape(len(texts), 8) + 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def clear_cache(self) -> None: ...


def tiny_beir(root: Path, split: str = "test") -> Path:
    """A BEIR folder: 6 documents, 3 queries, each with one relevant document."""
    root.mkdir(parents=True, exist_ok=True)
    topics = ["timeouts", "proxies", "retries", "deflate", "directories", "certificates"]
    docs = [
        {"_id": f"d{i}", "title": t.title(), "text": f"How {t} work. Configure {t} per client."}
        for i, t in enumerate(topics)
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"How do {topics[i]} work?"} for i in range(3)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    rows = "".join(f"q{i}\td{i}\t1\n" for i in range(3))
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


# --- the user-facing benchmarks, on tiny data ---------------------------------------------------


def test_bench_ingest_runs_end_to_end_with_a_fake_embedder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_script(BENCHMARKS / "bench_ingest.py", monkeypatch)
    monkeypatch.setattr(module, "CORPUS", tiny_beir(tmp_path / "scifact") / "corpus.jsonl")
    monkeypatch.setattr(module, "SentenceTransformerEmbedder", HashEmbedder)
    monkeypatch.setattr(sys, "argv", ["bench_ingest", "--limit", "4"])
    module.main()
    out = capsys.readouterr().out
    assert "documents 4, chunks 4" in out
    assert "4 unchanged" in out  # the re-run found every document unchanged


class _FakePipeline:
    """The part of RagPipeline bench_peers' ragserve side uses: an index and its embedder."""

    def __init__(self, settings: Settings) -> None:
        from ragserve.stores.local import LocalIndex

        self.settings = settings
        self.embedder = HashEmbedder()
        self.index = LocalIndex.from_settings(settings)
        self.index.open(self.embedder.fingerprint, self.embedder.dimension)

    def warm_up(self, *, generation: bool = True) -> None: ...

    def close(self) -> None:
        self.index.close()


def test_bench_peers_ragserve_side_and_report_on_a_tiny_beir_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragserve.pipeline

    module = load_script(BENCHMARKS / "bench_peers.py", monkeypatch)
    monkeypatch.setattr(ragserve.pipeline, "RagPipeline", _FakePipeline)
    ours = module.run_ragserve(tiny_beir(tmp_path / "beir"), "test", None, None, tmp_path / "w")
    assert (ours["documents"], ours["chunks"]) == (6, 6)
    assert 0.0 < ours["ndcg@10"] <= 1.0 and 0.0 < ours["recall@100"] <= 1.0
    peer = {**ours, "system": "llamaindex", "ingest_s": 2 * ours["ingest_s"]}
    peer.pop("embedding_runtime")
    result = module.compare(ours, peer, module._cpu())
    assert result["ingest_ratio"] == pytest.approx(2.0)
    table = module._table(result)
    assert "| ragserve (fake) |" in table and "ratios (ragserve / LlamaIndex)" in table


def test_bench_peers_loads_a_corpus_slice_with_its_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_script(BENCHMARKS / "bench_peers.py", monkeypatch)
    corpus, queries, qrels = module._load_beir(tiny_beir(tmp_path / "beir"), "test", None, 2)
    assert [d["_id"] for d in corpus] == ["d0", "d1"]
    assert sorted(queries) == sorted(qrels) == ["q0", "q1"]
    assert module._doc_run(["d1", "d0", "d1"]) == {"d1": 1000.0, "d0": 999.0}


def test_bench_retrieval_drives_the_eval_cli_with_stages_it_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from typer.testing import CliRunner

    from ragserve.cli.main import app
    from ragserve.evaluation.retrieval import ALL_STAGES

    module = load_script(BENCHMARKS / "bench_retrieval.py", monkeypatch)
    assert set(module.STAGES.split(",")) <= set(ALL_STAGES)
    help_text = CliRunner().invoke(app, ["eval", "retrieval", "--help"]).output
    for option in ("--dataset", "--stages", "--json", "--report"):
        assert option in help_text
    commands: list[list[str]] = []
    monkeypatch.setattr(module.subprocess, "run", _fake_eval(commands))
    monkeypatch.setattr(sys, "argv", ["bench_retrieval", "--datasets", "scifact"])
    module.main()
    assert commands[0][1:5] == ["-m", "ragserve.cli.main", "eval", "retrieval"]
    assert "bm25" in capsys.readouterr().out


def _fake_eval(commands: list[list[str]]) -> Callable[..., Any]:
    figures = {"ndcg@10": 0.5, "recall@10": 0.6, "recall@100": 0.9, "mrr@10": 0.5}
    out = {
        "queries": 3,
        "pipeline": "hybrid",
        "ablation": {"bm25": {**figures, "p50_ms": 1.0, "p95_ms": 2.0}},
        "stage_ms": {"retrieve": {"p50": 1.0, "p95": 2.0}},
    }

    def run(cmd: list[str], **_: Any) -> Any:
        commands.append(cmd)
        return type("Done", (), {"stdout": json.dumps(out)})()

    return run


def test_bench_rerank_reads_beir_and_ranks_bm25_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_script(BENCHMARKS / "bench_rerank.py", monkeypatch)
    tiny_beir(tmp_path / "scifact", split="train")
    monkeypatch.setattr(module, "DATASETS", tmp_path)
    cases = module.bm25_top("scifact", "train", 2, depth=3)
    assert len(cases) == 2 and all(len(texts) == 3 for _, texts in cases)
    assert "Timeouts" in cases[0][1][0]  # the query's own document ranks first
    assert module._runtime("torch-fp32") == "torch" and "onnx-int8" in module.FORMS


def test_bench_pgvector_builds_index_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragserve.stores.base import IndexWrite

    module = load_script(BENCHMARKS / "bench_pgvector.py", monkeypatch)
    rng = np.random.default_rng(0)
    centers = module._clustered(4, rng, np.eye(module.DIM, dtype=np.float32)[:4])
    writes = list(module._writes(20, rng, centers, 0))
    assert len(writes) == 2 and all(isinstance(w, IndexWrite) for w, _ in writes)
    assert writes[0][1].shape == (module.CHUNKS_PER_DOC, module.DIM)
    assert module._pct([0.001, 0.002, 0.003], 50) == pytest.approx(2.0)


def test_bench_pdf_text_scores_words_page_by_page(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script(BENCHMARKS / "bench_pdf_text.py", monkeypatch)
    assert module.words("The “files” are—here.") == {"the": 1, "files": 1, "are-here": 1}
    assert module.score(["one two", "three"], ["one two", "three four"]) == (3, 3, 4)
    assert module.f1(0.5, 1.0) == pytest.approx(2 / 3)
    assert module.reference_pages(Path("zlib.3.pdf"))  # the hand-made reference is there


def test_bench_mcp_and_bench_chat_share_questions_and_the_sample_corpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_script(BENCHMARKS / "bench_mcp.py", monkeypatch)
    assert module.SAMPLES.is_dir() and len(module.QUESTIONS) == 10
    assert module._spelled("Why?", 2) != module._spelled("Why?", 3)
    assert module._summary("mcp", [10.0, 20.0, 30.0], [1.0, 2.0, 3.0]).split()[:3] == [
        "mcp",
        "3",
        "20.0",
    ]


def test_load_chat_refuses_a_target_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script(BENCHMARKS / "load_chat.py", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["load_chat", "--url", "http://example.com:8000"])
    with pytest.raises(SystemExit, match="only loopback"):
        asyncio.run(module.main())
    assert module._pct([1.0, 2.0, 3.0], 50) == 2.0


def test_load_chat_reports_answers_a_minute_and_how_fast_it_sheds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    from collections import Counter

    module = load_script(BENCHMARKS / "load_chat.py", monkeypatch)
    args = argparse.Namespace(clients=6, seconds=30.0, generator="llama")
    codes = Counter({200: 4, 503: 3})
    module._report(args, codes, {200: [900.0, 1100.0, 950.0, 1000.0], 503: [4.0, 6.0, 5.0]}, [1.0])
    out = capsys.readouterr().out
    assert "answers per minute: 8.0" in out and "errors (other than 429 and 503): 0" in out
    assert "503 (shed) ms: p50 5" in out and "CPU flags:" in out


def test_compare_stores_uses_the_migration_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragserve.stores.migrate import copy_index

    module = load_script(BENCHMARKS / "compare_stores.py", monkeypatch)
    assert module.copy_index is copy_index and module.SCIFACT.name == "scifact"
