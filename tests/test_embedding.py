from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

import ragserve.embedding.embedder as embedding
from ragserve.config import Settings
from ragserve.embedding.embedder import (
    MIN_AGREEMENT,
    PROBE_TEXTS,
    SentenceTransformerEmbedder,
    choose_runtime,
    open_index_with,
)
from ragserve.errors import EmbedderMismatchError, ModelNotFoundError
from ragserve.runtime.cpu import cpu_flags, has_bf16, has_int8_dot_product, physical_cores

TEXTS = [
    "How do I set a timeout?",
    "Configuring request timeouts in httpx",
    "The recipe needs two eggs",
]


@pytest.fixture(scope="module")
def torch_embedder() -> SentenceTransformerEmbedder:
    e = SentenceTransformerEmbedder(runtime="torch")
    e.warm_up()
    return e


@pytest.fixture(scope="module")
def auto_embedder() -> SentenceTransformerEmbedder:
    """RAGSERVE_EMBEDDING_RUNTIME=auto: the ONNX form this CPU runs fastest."""
    e = SentenceTransformerEmbedder(runtime="auto")
    e.warm_up()
    return e


def test_builtin_model_embeds_offline(embedder: SentenceTransformerEmbedder) -> None:
    v = embedder.embed(TEXTS)
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert embedder.max_tokens == 254


def test_auto_runtime_follows_the_cpu(auto_embedder: SentenceTransformerEmbedder) -> None:
    expected = choose_runtime("auto", cpu_flags())
    assert expected == (
        "openvino-bf16" if has_bf16() else "onnx-int8" if has_int8_dot_product() else "onnx-fp32"
    )
    assert auto_embedder.runtime == expected
    assert auto_embedder.fingerprint == f"builtin:all-MiniLM-L6-v2@{expected}"


def test_default_runtime_is_the_cpus_fastest(embedder: SentenceTransformerEmbedder) -> None:
    expected = choose_runtime("auto", cpu_flags())
    assert Settings().ingest.embedding_runtime == "auto"
    # Falls back to PyTorch only when the export disagrees, which a test below covers.
    assert embedder.runtime == expected


def test_pytorch_keeps_the_bare_fingerprint(torch_embedder: SentenceTransformerEmbedder) -> None:
    # Indexes built before the ONNX runtime existed recorded the bare model name: they open.
    assert torch_embedder.runtime == "torch-fp32"
    assert torch_embedder.fingerprint == "builtin:all-MiniLM-L6-v2"


def test_choose_runtime_from_cpu_flags() -> None:
    assert choose_runtime("auto", frozenset({"avx2", "avx512f", "avx512_vnni"})) == "onnx-int8"
    assert choose_runtime("auto", frozenset({"avx2", "avx_vnni"})) == "onnx-int8"
    # Plain AVX2 int8 GEMMs saturate (vpmaddubsw), so fp32 there.
    assert choose_runtime("auto", frozenset({"avx2", "fma", "avx512f"})) == "onnx-fp32"
    assert choose_runtime("torch", frozenset({"avx512_vnni"})) == "torch-fp32"
    assert choose_runtime("onnx-fp32", frozenset({"avx512_vnni"})) == "onnx-fp32"
    # Native bf16 (AVX-512 BF16 or AMX) beats int8 there: OpenVINO in bf16.
    bf16 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    assert choose_runtime("auto", bf16) == "openvino-bf16"
    assert choose_runtime("auto", frozenset({"avx2", "amx_bf16", "amx_int8"})) == "openvino-bf16"
    assert choose_runtime("onnx-int8", bf16) == "onnx-int8"


def test_cpu_facts_are_sane() -> None:
    assert 1 <= physical_cores() <= (len(__import__("os").sched_getaffinity(0)))
    assert isinstance(cpu_flags(), frozenset)


@pytest.fixture(scope="module", params=["auto", "onnx-fp32", "onnx-int8", "openvino-bf16"])
def runtime_embedder(request: pytest.FixtureRequest) -> SentenceTransformerEmbedder:
    """Every form ``auto`` can pick, whatever this CPU is (a bf16 CPU would otherwise never
    run the int8 form in tests, an AVX2 one never OpenVINO)."""
    if request.param == "onnx-int8" and not has_int8_dot_product():
        pytest.skip("int8 is never chosen without VNNI/AMX: plain AVX2 int8 GEMMs saturate")
    e = SentenceTransformerEmbedder(runtime=request.param)
    e.warm_up()
    assert e.runtime == choose_runtime(request.param, cpu_flags())  # no silent fallback
    return e


def test_exported_model_agrees_with_pytorch(
    runtime_embedder: SentenceTransformerEmbedder, torch_embedder: SentenceTransformerEmbedder
) -> None:
    """The real shipped model: every vector of each runtime within the agreement bound, on
    text the probe set never saw (a SciFact-like abstract past the token limit too)."""
    texts = [
        *TEXTS,
        "Statins lowered LDL cholesterol by 38% over five years in the treatment arm. " * 9,
        "ß-blockers and ACE inhibitors in heart failure with reduced ejection fraction",
        "0-dimensional biomaterials show inductive properties.",
    ]
    ours, ref = runtime_embedder.embed(texts), torch_embedder.embed(texts)
    assert np.all(np.sum(ours * ref, axis=1) >= MIN_AGREEMENT)
    # Measured limit of int8: a lone character (one word piece between [CLS] and [SEP]) is
    # where per-tensor activation scales hurt most, 0.978-0.987 against PyTorch.
    tiny = ["x", "?", "n"]
    assert np.all(np.sum(runtime_embedder.embed(tiny) * torch_embedder.embed(tiny), axis=1) >= 0.97)
    # The PyTorch path reproduces sentence-transformers' own encode exactly.
    st = torch_embedder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(ref, st, atol=1e-5)


def test_query_cache_hits(embedder: SentenceTransformerEmbedder) -> None:
    before = embedder.cache_hits
    a = embedder.embed_query("a repeated question")
    b = embedder.embed_query("a repeated question")
    assert embedder.cache_hits == before + 1 and np.array_equal(a, b)


def test_missing_local_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        SentenceTransformerEmbedder(str(tmp_path / "no-model")).warm_up()


def test_concurrent_encoding_with_mixed_lengths(embedder: SentenceTransformerEmbedder) -> None:
    """Chat threads, ingestion threads and a chunker share one embedder: no "Already
    borrowed", and every thread gets exactly the vectors a lone caller gets for the same batch
    (int8 activation scales are per batch, so the comparison is batch for batch)."""
    texts = [("word " * n).strip() for n in (1, 3, 40, 300, 7, 120, 600, 2)]
    groups = [[0, 3, 6], [1, 2], [4, 5, 7, 0], [6], [2, 7, 1, 5, 3]]
    expected = [embedder.embed([texts[i] for i in g]) for g in groups]
    errors: list[BaseException] = []
    mismatches: list[int] = []
    start = threading.Barrier(7)

    def encode(seed: int) -> None:
        rng = np.random.default_rng(seed)
        start.wait()
        try:
            for _ in range(15):
                g = int(rng.integers(len(groups)))
                got = embedder.embed([texts[i] for i in groups[g]])
                if not np.allclose(got, expected[g], atol=1e-5):
                    mismatches.append(g)
                embedder.embed_query(f"{texts[int(rng.integers(len(texts)))]} {seed}")
        except BaseException as exc:
            errors.append(exc)

    def chunk_like() -> None:
        # What the chunker does with the shared tokenizer: no truncation, offsets.
        start.wait()
        try:
            for _ in range(60):
                embedder.tokenizer(texts[6], add_special_tokens=False, return_offsets_mapping=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=chunk_like))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not mismatches


def test_failed_export_falls_back_to_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(embedding, "export_onnx", broken)
    e = SentenceTransformerEmbedder(runtime="onnx-fp32", onnx_cache=tmp_path)
    with caplog.at_level(logging.WARNING, logger="ragserve.embedding.embedder"):
        e.warm_up()
    assert e.runtime == "torch-fp32" and e.fingerprint == "builtin:all-MiniLM-L6-v2"
    assert "falling back to PyTorch" in caplog.text and "exporter crashed" in caplog.text
    assert e.embed(TEXTS).shape == (3, 384)
    assert not list(tmp_path.glob("*/model.onnx"))  # nothing half-built is left to trust


@pytest.mark.slow
def test_disagreeing_export_is_rejected_once_and_never_used(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    torch_embedder: SentenceTransformerEmbedder,
) -> None:
    monkeypatch.setattr(embedding, "MIN_AGREEMENT", 1.5)  # no export can agree this well
    first = SentenceTransformerEmbedder(runtime="onnx-fp32", onnx_cache=tmp_path)
    with caplog.at_level(logging.WARNING, logger="ragserve.embedding.embedder"):
        first.warm_up()
    assert first.runtime == "torch-fp32"
    assert "disagree with PyTorch" in caplog.text
    assert np.allclose(first.embed(TEXTS), torch_embedder.embed(TEXTS), atol=1e-5)
    # The rejection is cached: the next start falls back without exporting again.
    monkeypatch.setattr(embedding, "export_onnx", lambda *a, **k: pytest.fail("re-exported"))
    second = SentenceTransformerEmbedder(runtime="onnx-fp32", onnx_cache=tmp_path)
    assert second.runtime == "torch-fp32"


def test_index_built_on_one_runtime_refuses_another(
    tmp_path: Path,
    torch_embedder: SentenceTransformerEmbedder,
) -> None:
    from ragserve.stores.local import LocalIndex

    settings = Settings(data_dir=tmp_path)
    index = LocalIndex.from_settings(settings)
    open_index_with(index, torch_embedder)
    index.close()
    explicit = SentenceTransformerEmbedder(runtime="onnx-fp32")
    other = LocalIndex.from_settings(settings)
    with pytest.raises(EmbedderMismatchError) as info:
        open_index_with(other, explicit)
    assert "ragserve reindex" in (info.value.hint or "")
    assert "RAGSERVE_EMBEDDING_RUNTIME=torch" in (info.value.hint or "")
    assert explicit.runtime in info.value.message
    other.close()


def test_auto_keeps_an_existing_index_on_its_runtime(
    tmp_path: Path, torch_embedder: SentenceTransformerEmbedder
) -> None:
    """Flipping the default to ONNX must not send indexes built on PyTorch to a re-embed."""
    from ragserve.stores.local import LocalIndex

    settings = Settings(data_dir=tmp_path)
    index = LocalIndex.from_settings(settings)
    open_index_with(index, torch_embedder)
    index.close()

    auto = SentenceTransformerEmbedder(runtime="auto")
    auto.warm_up()
    assert auto.runtime != "torch-fp32" or not has_int8_dot_product()
    auto.embed_query(TEXTS[0])  # cached on the preferred runtime; must not survive the switch
    reopened = LocalIndex.from_settings(settings)
    open_index_with(reopened, auto)
    assert auto.runtime == "torch-fp32" and auto.fingerprint == torch_embedder.fingerprint
    assert np.allclose(auto.embed_query(TEXTS[0]), torch_embedder.embed([TEXTS[0]])[0], atol=1e-5)
    reopened.close()

    # Re-indexing does not adopt: it is how the index moves to the preferred runtime.
    fresh = SentenceTransformerEmbedder(runtime="auto")
    again = LocalIndex.from_settings(settings)
    if fresh.runtime != "torch-fp32":
        with pytest.raises(EmbedderMismatchError):
            open_index_with(again, fresh, adopt=False)
    again.close()


def test_probe_set_covers_truncation_and_padding() -> None:
    # The agreement check is only as good as its probes: one must pass the token limit.
    assert any(len(t.split()) > 256 for t in PROBE_TEXTS)
    assert min(len(t) for t in PROBE_TEXTS) <= 2
