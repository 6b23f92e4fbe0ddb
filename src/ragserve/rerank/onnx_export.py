"""Which form the re-ranker runs in, and the ONNX copy of its weights that the fast forms need.

The shipped cross-encoder is safetensors for PyTorch. ONNX Runtime runs the same network 2-4x
faster on a CPU, and int8 (dynamic quantisation) faster again where the CPU has int8
dot-product instructions (VNNI); without them onnxruntime's int8 kernels use AVX2's
``vpmaddubsw``, which can saturate and gains less, so fp32 ONNX is the choice there.
The ONNX file is derived from the installed weights on first use rather than committed: it is
written once into the user cache, under a file lock (several workers may start together), keyed
by the weights' hash, the precision and the onnxruntime version (a new runtime may fuse the
graph differently). An export that fails, or whose scores disagree with the original on a fixed
set of real pairs, is not used: the caller falls back to PyTorch with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ragserve.runtime.cpu import INT8_FLAGS
from ragserve.runtime.onnx import export_onnx, quantize_int8

# What a folder of an exported cross-encoder holds, in order of preference.
ONNX_FILES = ("model_int8.onnx", "model.onnx")

__all__ = [
    "MIN_SPEARMAN",
    "ONNX_FILES",
    "Precision",
    "RerankRuntime",
    "export_cross_encoder_onnx",
    "exported_model",
    "preferred_precision",
]

log = logging.getLogger("ragserve.rerank")

Precision = Literal["int8", "fp32"]
# "torch-fp16" keeps the checkpoint's fp16 on PyTorch: slow on CPUs, there to be measured.
RerankRuntime = Literal["auto", "torch", "torch-fp16", "onnx-fp32", "onnx-int8"]
MIN_SPEARMAN = 0.95
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")


def preferred_precision(flags: frozenset[str]) -> Precision:
    return "int8" if flags & INT8_FLAGS else "fp32"


def _cache_root() -> Path:
    from ragserve.runtime.models import cache_dir

    return cache_dir().parent / "reranker-onnx"


def weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            h.update(name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def exported_model(
    model_dir: Path, precision: Precision, agreement: Callable[[Path], float]
) -> Path | None:
    """The cached ONNX export of ``model_dir`` at ``precision`` (made now if missing), or None
    when it cannot be made or ``agreement(onnx_dir)`` (Spearman against the original) is below
    MIN_SPEARMAN."""
    import onnxruntime as ort
    from filelock import FileLock

    root = _cache_root()
    key = f"{weights_digest(model_dir)[:16]}-{precision}-ort{ort.__version__}"
    target = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f"{key}.lock"), timeout=900):
            meta = _read_meta(target)
            if meta is None:
                meta = _export(model_dir, target, precision, agreement)
    except Exception as exc:  # an unusable export must never take the stage down
        log.warning("re-ranker: ONNX %s export failed (%s); using PyTorch", precision, exc)
        return None
    if not meta["ok"]:
        log.warning(
            "re-ranker: ONNX %s export disagrees with the original (Spearman %.3f < %.2f); "
            "using PyTorch",
            precision,
            meta["spearman"],
            MIN_SPEARMAN,
        )
        return None
    return target / meta["file"]


def _read_meta(target: Path) -> dict | None:
    try:
        return json.loads((target / "export.json").read_text())
    except (OSError, ValueError):
        return None


def _export(
    model_dir: Path, target: Path, precision: Precision, agreement: Callable[[Path], float]
) -> dict:

    log.info("re-ranker: exporting %s to ONNX %s in %s (once)", model_dir, precision, target)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        model_file = export_cross_encoder_onnx(model_dir, tmp, quantize=precision == "int8")
        rho = float(agreement(tmp))
        # A disagreeing export is recorded too, so later starts fall back at once instead of
        # exporting again; it is keyed by the runtime version, so an upgrade tries anew.
        meta = {
            "file": model_file.name,
            "precision": precision,
            "spearman": round(rho, 4),
            "ok": rho >= MIN_SPEARMAN,
            "source": str(model_dir),
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(target, ignore_errors=True)  # a half-written one from a killed process
        os.replace(tmp, target)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_cross_encoder_onnx(
    checkpoint: str | Path, out: str | Path, *, quantize: bool = True
) -> Path:
    """Write a sentence-transformers / Hugging Face cross-encoder ``checkpoint`` as ONNX, with
    its tokenizer and config, into ``out`` (which ``RAGSERVE_RERANKER_MODEL`` can then name).

    With ``quantize`` the weights become int8 (dynamic quantization, per channel): a quarter of
    the size, faster on CPUs with int8 dot-product instructions (VNNI), at a small cost in
    agreement with the original that the caller should measure (``agreement``); the built-in
    re-ranker's own export is made, checked and cached by ``rerank_onnx.exported_model``.
    """
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), dtype=torch.float32, local_files_only=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    names = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]
    example = tokenizer(["query"], ["a passage"], return_tensors="pt")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx" if quantize else out / ONNX_FILES[1]
        export_onnx(
            model,
            {n: example[n] for n in names},
            fp32,
            output_name="logits",
            output_axes={0: "batch"},
        )
        target = quantize_int8(fp32, out / ONNX_FILES[0]) if quantize else fp32
    # Saved as the model's own limit, not the length it happened to be trained at.
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(str(out))
    model.config.save_pretrained(str(out))
    return target
